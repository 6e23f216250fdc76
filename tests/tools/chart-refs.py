#!/usr/bin/env python3
"""References inside one render of the chart (tests/tools/check-chart.sh refs).

usage: chart-refs.py RENDER.yaml

Every selector picks exactly the pod template it is meant for (the agent DaemonSet, or the
bundled Redis for objects whose name ends in -redis): Service selectors, NetworkPolicy
podSelectors, PodMonitor selectors; ServiceMonitor selectors pick the agent's Service. Every
port they name resolves there: Service targetPort, NetworkPolicy ingress ports, probes
(startup, liveness, readiness) in their own container, ServiceMonitor endpoints (a port name
of the Service), PodMonitor endpoints (a container port name). Pod templates carry
checksum/secrets = sha256 of the generated Secret's data when there is one, and none
otherwise. Exit 0, or 1 with one line per problem.
"""
import hashlib
import sys

import yaml

problems = []


def problem(msg):
    problems.append(msg)
    print(f"chart-refs: {msg}", file=sys.stderr)


def matches(selector, labels):
    if not selector:
        return False
    structured = "matchLabels" in selector or "matchExpressions" in selector
    ml = selector.get("matchLabels") if structured else selector
    if structured and selector.get("matchExpressions"):
        problem(f"matchExpressions are not checked here: {selector}")
    return all(labels.get(k) == v for k, v in (ml or {}).items())


def ports_of(containers):
    names, numbers = set(), set()
    for c in containers:
        for p in c.get("ports", []):
            numbers.add(p["containerPort"])
            if "name" in p:
                names.add(p["name"])
    return names, numbers


def resolves(port, containers):
    names, numbers = ports_of(containers)
    return port in names if isinstance(port, str) else port in numbers


def main():
    docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
    obj = lambda d: f"{d['kind']}/{d['metadata']['name']}"  # noqa: E731
    templates = {}  # role -> (workload, pod template)
    for d in docs:
        if d["kind"] in ("DaemonSet", "Deployment", "StatefulSet"):
            role = "redis" if d["metadata"]["name"].endswith("-redis") else "agent"
            if role in templates:
                problem(f"two {role} workloads: {obj(templates[role][0])}, {obj(d)}")
            templates[role] = (d, d["spec"]["template"])
            if not matches(d["spec"]["selector"], d["spec"]["template"]["metadata"].get("labels", {})):
                problem(f"{obj(d)}: its selector does not pick its own pod template")

    def target(d, selector):
        """The template the selector picks: exactly the intended one, or None."""
        want = "redis" if d["metadata"]["name"].endswith("-redis") else "agent"
        picked = [r for r, (_, t) in templates.items() if matches(selector, t["metadata"].get("labels", {}))]
        if picked != [want]:
            problem(f"{obj(d)}: its selector picks {picked or 'no pod template'}, expected [{want!r}]")
            return None
        return templates[want][1]

    services = [d for d in docs if d["kind"] == "Service"]
    for d in docs:
        k = d["kind"]
        if k == "Service":
            t = target(d, d["spec"].get("selector"))
            if t is None:
                continue
            for p in d["spec"]["ports"]:
                tp = p.get("targetPort", p["port"])
                if not resolves(tp, t["spec"]["containers"]):
                    problem(f"{obj(d)}: port {p.get('name')} targetPort {tp} is no container port of its pods")
        elif k == "NetworkPolicy":
            t = target(d, d["spec"]["podSelector"])
            if t is None:
                continue
            for rule in d["spec"].get("ingress", []):
                for p in rule.get("ports", []):
                    if "port" in p and not resolves(p["port"], t["spec"]["containers"]):
                        problem(f"{obj(d)}: ingress port {p['port']} is no container port of its pods")
                for f in rule.get("from", []):
                    if "podSelector" in f and f["podSelector"].get("matchLabels") and not any(
                        matches(f["podSelector"], tt["metadata"].get("labels", {})) for _, tt in templates.values()
                    ):
                        problem(f"{obj(d)}: a from.podSelector picks none of the release's pods")
        elif k == "PodMonitor":
            t = target(d, d["spec"]["selector"])
            if t is None:
                continue
            for e in d["spec"]["podMetricsEndpoints"]:
                names, _ = ports_of(t["spec"]["containers"])
                if e.get("port") not in names:
                    problem(f"{obj(d)}: endpoint port {e.get('port')} is no container port name of its pods")
        elif k == "ServiceMonitor":
            picked = [s for s in services if matches(d["spec"]["selector"], s["metadata"].get("labels", {}))]
            agent_svcs = [s for s in picked if not s["metadata"]["name"].endswith("-redis")]
            if len(picked) != 1 or len(agent_svcs) != 1:
                problem(f"{obj(d)}: its selector picks {[obj(s) for s in picked]}, expected the agent's Service")
                continue
            names = {p.get("name") for p in agent_svcs[0]["spec"]["ports"]}
            for e in d["spec"]["endpoints"]:
                if e.get("port") not in names:
                    problem(f"{obj(d)}: endpoint port {e.get('port')} is no port name of {obj(agent_svcs[0])}")

    # probes, in the container that holds them
    for _, (w, t) in templates.items():
        for c in t["spec"]["containers"]:
            for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
                pr = c.get(probe)
                if not pr:
                    continue
                h = pr.get("httpGet") or pr.get("tcpSocket") or pr.get("grpc")
                if h and "port" in h and not resolves(h["port"], [c]):
                    problem(f"{obj(w)}: container {c['name']} {probe} port {h['port']} is none of its ports")

    # checksum/secrets
    secret = next((d for d in docs if d["kind"] == "Secret"), None)
    want = None
    if secret:
        body = "\n".join(f"{k}: {v}" for k, v in sorted(secret["data"].items()))
        want = hashlib.sha256(body.encode()).hexdigest()
    for _, (w, t) in templates.items():
        got = (t["metadata"].get("annotations") or {}).get("checksum/secrets")
        if got != want:
            problem(f"{obj(w)}: checksum/secrets is {got}, expected {want} (sha256 of the Secret's data)")

    if "agent" not in templates:
        problem("no agent DaemonSet")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
