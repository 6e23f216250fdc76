#!/usr/bin/env python3
"""Keeps the Helm chart's agent settings one to one with the agent's own table.

The agent's table (`blobswarm-agent --settings-json`) is the only list of settings and
defaults. From it this script generates, between markers, the parts of the chart that list
settings: the reference block in values.yaml, `agent.config` in values.schema.json and the
settings tables in README.md. `write` regenerates them; `check` fails when they drift, when a
setting is neither configurable nor set by the chart, when a value or README row names no
setting or no value, when tests/chart/values-all.yaml leaves an option unset, and when an
agent configuration the chart renders is one the agent refuses (`--check-config`).

It does not render anything but the DaemonSet's env, and knows nothing of Kubernetes schemas
(tests/tools/k8s-validate.mjs does that).

usage: chart-settings.py write|check --agent PATH [--helm PATH] [--chart DIR]
"""
import argparse
import json
import os
import re
import subprocess
import sys
import textwrap

import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Settings the chart sets itself (from the pod's layout and identity and from other values):
# key -> what sets it (README). The DaemonSet template refuses them in agent.config.
MANAGED = {
    "agent_socket": "`/run/blobswarm/agent.sock` in the pod; on the node: `agent.socket.hostPath`",
    "agent_listen": "`0.0.0.0:<agent.httpPort>`",
    "store_dir": "`/var/lib/blobswarm/chunks-<uid>` in the pod (uid: the agent's); on the "
    "node: under `agent.store.hostPath`",
    "node_name": "the node's name (`spec.nodeName`)",
    "redis_url": "`redis://<fullname>-redis:<redis.port>/0` (`redis.mode: bundled`) or "
    "`redis.external.url`; unset without `peers.enabled`",
    "redis_password_file": "a copy of the password from `redis.auth` (bundled) or "
    "`redis.external.existingSecret`",
    "peer_listen": "`0.0.0.0:<peers.port>` with `peers.enabled`",
    "advertise_addr": "`<pod IP>:<peers.port>` (downward API)",
    "cluster_secret_file": "a copy of `peers.clusterSecret.existingSecret` or of the generated "
    "secret",
}
PREFIX = "BLOBSWARM_"
UNITS = [(1 << 40, "T"), (1 << 30, "G"), (1 << 20, "M"), (1 << 10, "K")]
# Value paths whose children README.md need not list one by one (Kubernetes objects passed
# through as they are).
OPAQUE = {"resources", "podSecurityContext", "updateStrategy", "livenessProbe",
          "readinessProbe", "nodeSelector", "tolerations", "affinity", "podAnnotations",
          "podLabels", "commonLabels", "annotations", "labels", "apiFrom", "extraEnv",
          "imagePullSecrets", "config"}

problems = []


def problem(msg):
    problems.append(msg)
    print("chart-settings: " + msg)


def load_table(agent):
    out = subprocess.run([agent, "--settings-json"], check=True, capture_output=True, text=True)
    table = json.loads(out.stdout)
    for s in table:
        if s["env"] != PREFIX + s["key"].upper():
            problem(f"setting {s['key']}: env {s['env']} is not {PREFIX}<KEY>; the chart's "
                    "mapping (templates/daemonset.yaml) would need a table of names")
    return table


def human_bytes(n):
    for mul, unit in UNITS:
        if n >= mul and n % mul == 0:
            return f"{n // mul}{unit}"
    return str(n)


def bounds(s):
    if s["type"] == "bytes":
        return f"{human_bytes(s['min'])}..{human_bytes(s['max'])}"
    if s["type"] in ("int", "ms"):
        return f"{s['min']}..{s['max']}" + (" ms" if s["type"] == "ms" else "")
    return ""


def yaml_default(s):
    if s["type"] in ("int", "ms"):
        return s["default"]
    return json.dumps(s["default"])


def configurable(table):
    return [s for s in table if s["key"] not in MANAGED]


# ---- generated parts ----------------------------------------------------------------------

def gen_values_block(table):
    lines = []
    for s in configurable(table):
        b = bounds(s)
        line = f"  #   {s['key']}: {yaml_default(s)}" + (f"  # {b}" if b else "")
        if len(line) > 100:  # a long default alone on its line (yamllint allows a long word)
            line = f"  #   {s['key']}:" + (f"  # {b}" if b else "") + f"\n  #     {yaml_default(s)}"
        lines += line.split("\n")
        lines += textwrap.wrap(s["help"], 96, initial_indent="  #       ",
                               subsequent_indent="  #       ", break_on_hyphens=False)
    return lines


def gen_schema_config(table):
    props = {}
    for s in configurable(table):
        desc = f"{s['env']}: {s['help']} (agent default: {s['default'] or 'empty'})"
        if s["type"] == "string":
            p = {"type": "string", "minLength": s["min"], "maxLength": s["max"]}
        elif s["type"] == "int":
            p = {"type": "integer", "minimum": s["min"], "maximum": s["max"]}
        elif s["type"] == "ms":
            p = {"anyOf": [{"type": "integer", "minimum": s["min"], "maximum": s["max"]},
                           {"type": "string", "pattern": "^[0-9]+(ms|s|m)$"}]}
            desc += "; a number of milliseconds, or a string with ms, s or m"
        elif s["type"] == "bytes":
            p = {"anyOf": [{"type": "integer", "minimum": s["min"], "maximum": s["max"]},
                           {"type": "string", "pattern": "^[0-9]+([KMGTkmgt][iI]?[bB]?)?$"}]}
            desc += "; bytes, or a string with K, M, G or T (powers of 1024)"
        else:
            problem(f"setting {s['key']}: unknown type {s['type']}")
            continue
        p["description"] = desc
        props[s["key"]] = p
    return {
        "type": "object",
        "description": "The agent's settings (blobswarm-agent --settings-json), by JSON key; "
        "rendered as BLOBSWARM_<KEY>. Generated by tests/tools/chart-settings.py.",
        "additionalProperties": False,
        "properties": props,
    }


def md_escape(t):
    return t.replace("|", "\\|")


def gen_readme_settings(table):
    rows = ["| key | environment variable | agent default | bounds | meaning |",
            "|---|---|---|---|---|"]
    for s in configurable(table):
        d = f"`{s['default']}`" if s["default"] != "" else "(empty)"
        rows.append(f"| `{s['key']}` | `{s['env']}` | {md_escape(d)} | {bounds(s)} | "
                    f"{md_escape(s['help'])} |")
    return rows


def gen_readme_managed(table):
    rows = ["| setting | environment variable | set from |", "|---|---|---|"]
    for s in table:
        if s["key"] in MANAGED:
            rows.append(f"| `{s['key']}` | `{s['env']}` | {MANAGED[s['key']]} |")
    return rows


def replace_block(lines, begin, end, new, path):
    try:
        i = next(n for n, l in enumerate(lines) if begin in l)
        j = next(n for n, l in enumerate(lines) if end in l and n > i)
    except StopIteration:
        problem(f"{path}: markers '{begin}' / '{end}' not found")
        return lines
    return lines[: i + 1] + new + lines[j:]


def generated_files(chart, table):
    """Returns {path: (current text, generated text)}."""
    out = {}
    p = os.path.join(chart, "values.yaml")
    cur = open(p).read()
    lines = replace_block(cur.split("\n"), "# BEGIN agent settings", "# END agent settings",
                          gen_values_block(table), p)
    out[p] = (cur, "\n".join(lines))

    p = os.path.join(chart, "values.schema.json")
    cur = open(p).read()
    schema = json.loads(cur)
    schema["properties"]["agent"]["properties"]["config"] = gen_schema_config(table)
    out[p] = (cur, json.dumps(schema, indent=2, ensure_ascii=False) + "\n")

    p = os.path.join(chart, "README.md")
    cur = open(p).read()
    lines = cur.split("\n")
    lines = replace_block(lines, "<!-- BEGIN agent settings -->", "<!-- END agent settings -->",
                          gen_readme_settings(table), p)
    lines = replace_block(lines, "<!-- BEGIN managed settings -->", "<!-- END managed settings -->",
                          gen_readme_managed(table), p)
    out[p] = (cur, "\n".join(lines))
    return out


# ---- checks --------------------------------------------------------------------------------

def leaf_paths(v, prefix=""):
    """Every value path; children of OPAQUE maps are not listed."""
    if isinstance(v, dict) and v and prefix.rsplit(".", 1)[-1] not in OPAQUE:
        for k, c in v.items():
            yield from leaf_paths(c, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def has_path(values, path):
    cur = values
    for part in path.split("."):
        if not isinstance(cur, dict) or part not in cur:
            return False
        cur = cur[part]
    return True


def check_static(chart, table):
    keys = {s["key"] for s in table}
    for k in MANAGED:
        if k not in keys:
            problem(f"MANAGED names {k}, which is not a setting of the agent")

    tpl = open(os.path.join(chart, "templates", "daemonset.yaml")).read()
    m = re.search(r'has \$k \(list ((?:"[a-z_]+" ?)+)\)', tpl)
    refused = set(re.findall(r'"([a-z_]+)"', m.group(1))) if m else set()
    if refused != set(MANAGED):
        problem("templates/daemonset.yaml refuses in agent.config "
                f"{sorted(refused)}, the chart sets {sorted(MANAGED)}")

    values = yaml.safe_load(open(os.path.join(chart, "values.yaml")))
    conf = values["agent"]["config"] or {}
    for k in conf:
        if k not in keys or k in MANAGED:
            problem(f"values.yaml: agent.config.{k} names no setting the chart passes on")

    readme = open(os.path.join(chart, "README.md")).read()
    mentioned = set(re.findall(r"`([A-Za-z][A-Za-z0-9_.]*)`", readme))
    for p in leaf_paths(values):
        parts = p.split(".")
        if not any(".".join(parts[:n]) in mentioned for n in range(min(2, len(parts)), len(parts) + 1)):
            problem(f"README.md does not list the value {p}")
    for row in re.findall(r"^\| `([A-Za-z][A-Za-z0-9_.]*)` \|", readme, re.M):
        if "." in row and not has_path(values, row):
            problem(f"README.md lists the value {row}, which values.yaml does not have")

    allv = yaml.safe_load(open(os.path.join(ROOT, "tests", "chart", "values-all.yaml")))
    for p in leaf_paths(values):
        if not has_path(allv, p):
            problem(f"tests/chart/values-all.yaml does not set {p}")
    for s in configurable(table):
        if s["key"] not in ((allv.get("agent") or {}).get("config") or {}):
            problem(f"tests/chart/values-all.yaml does not set agent.config.{s['key']}")


def parse_ms(v):
    m = re.fullmatch(r"\s*(\d+)\s*(ms|s|m)?\s*", str(v))
    if not m:
        return None
    return int(m.group(1)) * {None: 1, "ms": 1, "s": 1000, "m": 60000}[m.group(2)]


def render(helm, chart, args):
    cmd = [helm, "template", "blobswarm", chart, "--namespace", "blobswarm"] + args
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        problem(f"helm template {' '.join(args)} failed: {out.stderr.strip()}")
        return []
    return [d for d in yaml.safe_load_all(out.stdout) if d]


def check_rendered(helm, chart, agent, table):
    by_env = {s["env"]: s for s in table}
    variants = {
        "defaults": [],
        "values-all": ["-f", os.path.join(ROOT, "tests", "chart", "values-all.yaml")],
        "peers off": ["--set", "peers.enabled=false"],
        "external redis": ["--set", "redis.mode=external",
                           "--set", "redis.external.url=redis://redis.example:6379/0"],
    }
    for name, args in variants.items():
        docs = render(helm, chart, args)
        ds = [d for d in docs if d.get("kind") == "DaemonSet"]
        if len(ds) != 1:
            problem(f"{name}: {len(ds)} DaemonSets rendered")
            continue
        pod = ds[0]["spec"]["template"]["spec"]
        agent_c = next(c for c in pod["containers"] if c["name"] == "agent")
        env, resolved = {}, {}
        for e in agent_c.get("env", []):
            n = e["name"]
            if n in env:
                problem(f"{name}: env {n} set twice")
            if "value" in e:
                v = re.sub(r"\$\(([A-Za-z_][A-Za-z0-9_]*)\)", lambda m: resolved.get(m.group(1), m.group(0)),
                           str(e["value"]))
            else:
                field = e.get("valueFrom", {}).get("fieldRef", {}).get("fieldPath")
                v = {"status.podIP": "10.1.2.3", "spec.nodeName": "node-a"}.get(field)
                if v is None:
                    continue  # extraEnv from Secrets etc.: not a setting
            env[n], resolved[n] = v, v
        for n in env:
            if n.startswith(PREFIX) and n not in by_env:
                problem(f"{name}: the DaemonSet sets {n}, which is not a setting of the agent")
        peers = "BLOBSWARM_REDIS_URL" in env
        for k in MANAGED:
            n = PREFIX + k.upper()
            optional = k == "redis_password_file" or (not peers and k in (
                "redis_url", "peer_listen", "advertise_addr", "cluster_secret_file"))
            if n not in env and not optional:
                problem(f"{name}: the chart does not set {n}")
        # The files the settings name exist only in the pod; --check-config checks the values.
        run_env = {k: v for k, v in env.items() if k.startswith(PREFIX)}
        run_env["PATH"] = os.environ.get("PATH", "/usr/bin:/bin")
        out = subprocess.run([agent, "--check-config"], env=run_env, capture_output=True, text=True)
        msg = (out.stdout + out.stderr).strip()
        if out.returncode != 0:
            problem(f"{name}: blobswarm-agent --check-config refuses the rendered env: {msg}")
        else:
            print(f"chart-settings: {name}: {len(run_env) - 1} BLOBSWARM_* variables; {msg}")
        drain = parse_ms(env.get("BLOBSWARM_DRAIN_MS", by_env["BLOBSWARM_DRAIN_MS"]["default"]))
        grace = pod.get("terminationGracePeriodSeconds", 30) * 1000
        if drain is None or grace < drain + 5000:
            problem(f"{name}: terminationGracePeriodSeconds ({grace} ms) is not at least 5 s above "
                    f"the agent's drain time ({drain} ms)")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["write", "check"])
    ap.add_argument("--agent", required=True)
    ap.add_argument("--helm")
    ap.add_argument("--chart", default=os.path.join(ROOT, "helm", "blobswarm"))
    a = ap.parse_args()
    table = load_table(a.agent)
    files = generated_files(a.chart, table)
    if a.mode == "write":
        for p, (cur, new) in files.items():
            if cur != new:
                open(p, "w").write(new)
                print(f"chart-settings: wrote {os.path.relpath(p, ROOT)}")
        return 1 if problems else 0
    for p, (cur, new) in files.items():
        if cur != new:
            problem(f"{os.path.relpath(p, ROOT)} is not what the agent's table generates: run "
                    "tests/tools/chart-settings.py write --agent build/agent/blobswarm-agent")
    check_static(a.chart, table)
    if a.helm:
        check_rendered(a.helm, a.chart, a.agent, table)
    print(f"chart-settings: {len(table)} settings ({len(configurable(table))} in agent.config, "
          f"{len(MANAGED)} set by the chart), {len(problems)} problem(s)")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
