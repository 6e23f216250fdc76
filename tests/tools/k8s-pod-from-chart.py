#!/usr/bin/python3
"""Turns the pod template of a DaemonSet rendered by `helm template` into a Pod that
`podman kube play` runs (podman 4.3 plays Pods, not DaemonSets), doing what the kubelet would
do on one node and nothing more:

- env `valueFrom`: fieldRef (spec.nodeName, metadata.name/namespace, status.podIP/hostIP,
  spec.serviceAccountName) and
  secretKeyRef/configMapKeyRef (from the Secrets and ConfigMaps in the rendered stream or
  in --objects files) become values; `$(VAR)` references are expanded as the kubelet does;
- `secret` and `configMap` volumes become hostPath directories written under DIR/volumes in
  the kubelet's layout (a timestamped directory, `..data` and one symbolic link per key,
  files of defaultMode/mode, owned by root, of the pod's fsGroup and group-readable if set);
- every hostPath path P becomes DIR/node/P (the node's filesystem, in the test's directory),
  and every emptyDir a directory DIR/volumes/NAME (podman 4.3 would share one named volume
  between pods);
- restartPolicy becomes OnFailure (podman 4.3 would rerun finished init containers under
  Always);
- probes are removed (podman 4.3 turns an httpGet probe into a healthcheck running curl
  inside the container, which the image does not have) and written to DIR/probes.json, with named ports
  resolved, for the test to call;
- the pod runs on the host's network (hostNetwork: true), so that loopback servers (Redis,
  Azurite) and the probes' ports are reachable as on a node; the containers' port lists,
  information only there, are dropped (podman 4.3 refuses them with the host's network);
- the pod template's checksum/secrets annotation is dropped (podman 4.3 refuses annotation
  values over 63 characters; it means nothing to a kubelet);
- init containers are kept once they have run (podman's annotation for that), so that their
  exit status can be checked.

Everything else (securityContext, resources, volumes and mounts, commands, init containers)
is kept as rendered. Unsupported cases fail loudly rather than being dropped.

usage: k8s-pod-from-chart.py --rendered FILE --dir DIR --out POD.yaml
         [--objects FILE]... [--daemonset NAME] [--pod-name NAME] [--node-name NAME]
         [--node-ip IP]
Writes POD.yaml, DIR/probes.json and DIR/pod.json (the hostPath volumes with their host
paths, each container's resolved env, mounts, securityContext and the uid/gid it runs as)
for the test.
Needs Debian's python3-yaml (scripts/setup.sh installs it)."""

import argparse
import base64
import copy
import json
import os
import re
import sys
import time

import yaml


def die(msg):
    print(f"k8s-pod-from-chart: {msg}", file=sys.stderr)
    sys.exit(1)


def load_docs(paths):
    docs = []
    for p in paths:
        with open(p, encoding="utf-8") as f:
            docs.extend(d for d in yaml.safe_load_all(f) if isinstance(d, dict))
    return docs


def secret_data(obj):
    """The bytes of each key of a Secret (data is base64, stringData plain) or ConfigMap."""
    out = {}
    if obj["kind"] == "Secret":
        for k, v in (obj.get("data") or {}).items():
            out[k] = base64.b64decode(v)
        for k, v in (obj.get("stringData") or {}).items():
            out[k] = str(v).encode()
    else:
        for k, v in (obj.get("data") or {}).items():
            out[k] = str(v).encode()
        for k, v in (obj.get("binaryData") or {}).items():
            out[k] = base64.b64decode(v)
    return out


class Node:
    def __init__(self, args, docs):
        self.dir = os.path.abspath(args.dir)
        self.node_name = args.node_name
        self.node_ip = args.node_ip
        self.objects = {}
        for d in docs:
            if d.get("kind") in ("Secret", "ConfigMap"):
                self.objects[(d["kind"], d["metadata"]["name"])] = secret_data(d)

    def lookup(self, kind, name, key, optional=False):
        data = self.objects.get((kind, name))
        if data is None or key not in data:
            if optional:
                return None
            die(f"{kind} {name} (key {key}) is neither rendered nor given with --objects")
        return data[key]

    def host_path(self, path):
        return os.path.join(self.dir, "node", path.lstrip("/"))

    def write_volume(self, vol_name, kind, name, items, default_mode, fs_group):
        """A Secret or ConfigMap volume the way the kubelet's atomic writer lays it out; with
        the pod's fsGroup, files are of that group and group-readable (the kubelet's volume
        ownership for a read-only volume)."""
        data = self.objects.get((kind, name))
        if data is None:
            die(f"volume {vol_name}: {kind} {name} is neither rendered nor given with --objects")
        root = os.path.join(self.dir, "volumes", vol_name)
        stamp = time.strftime("..%Y_%m_%d_%H_%M_%S.000000001", time.gmtime())
        real = os.path.join(root, stamp)
        os.makedirs(real, mode=0o755)
        os.chmod(root, 0o1777)  # as the kubelet's tmpfs for the volume
        files = items or [{"key": k, "path": k} for k in data]
        for it in files:
            if it["key"] not in data:
                die(f"volume {vol_name}: {kind} {name} has no key {it['key']}")
            dest = os.path.join(real, it["path"])
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            with open(dest, "wb") as f:
                f.write(data[it["key"]])
            mode = it.get("mode", default_mode)
            if fs_group is not None:
                os.chown(dest, 0, fs_group)
                mode |= 0o440
            os.chmod(dest, mode)
        if fs_group is not None:
            os.chown(real, 0, fs_group)
            os.chmod(real, 0o2755)
        os.symlink(stamp, os.path.join(root, "..data"))
        for it in files:
            top = it["path"].split("/")[0]
            link = os.path.join(root, top)
            if not os.path.lexists(link):
                os.symlink(os.path.join("..data", top), link)
        return root


def resolve_env(node, pod_meta, container):
    """Replaces valueFrom by values and expands $(VAR) as the kubelet does."""
    resolved = {}
    out = []
    for e in container.get("env") or []:
        e = dict(e)
        vf = e.pop("valueFrom", None)
        if vf is not None:
            if "fieldRef" in vf:
                fp = vf["fieldRef"]["fieldPath"]
                fields = {
                    "spec.nodeName": node.node_name,
                    "status.podIP": node.node_ip,
                    "status.hostIP": node.node_ip,
                    "metadata.name": pod_meta["name"],
                    "metadata.namespace": pod_meta.get("namespace", "default"),
                    "spec.serviceAccountName": "default",
                }
                if fp not in fields:
                    die(f"env {e['name']}: fieldRef {fp} is not supported here")
                e["value"] = fields[fp]
            elif "secretKeyRef" in vf or "configMapKeyRef" in vf:
                kind = "Secret" if "secretKeyRef" in vf else "ConfigMap"
                ref = vf.get("secretKeyRef") or vf.get("configMapKeyRef")
                v = node.lookup(kind, ref["name"], ref["key"], ref.get("optional", False))
                if v is None:
                    continue
                e["value"] = v.decode()
            else:
                die(f"env {e['name']}: valueFrom {list(vf)} is not supported here")
        else:
            # $(VAR) names an earlier variable; $$ is a literal $; unknown ones stay as written.
            def expand(m):
                if m.group(0) == "$$":
                    return "$"
                return resolved.get(m.group(1), m.group(0))

            e["value"] = re.sub(r"\$\$|\$\(([A-Za-z_][A-Za-z0-9_]*)\)", expand, str(e.get("value", "")))
        resolved[e["name"]] = e["value"]
        out.append(e)
    if container.get("envFrom"):
        die(f"container {container['name']}: envFrom is not supported here")
    container["env"] = out
    return resolved


def resolve_port(container, port):
    if isinstance(port, int):
        return port
    for p in container.get("ports") or []:
        if p.get("name") == port:
            return p["containerPort"]
    die(f"container {container['name']}: no port named {port}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rendered", required=True)
    ap.add_argument("--objects", action="append", default=[])
    ap.add_argument("--dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--daemonset")
    ap.add_argument("--pod-name")
    ap.add_argument("--node-name", default="e2e-node")
    ap.add_argument("--node-ip", default="127.0.0.1")
    args = ap.parse_args()

    docs = load_docs([args.rendered] + args.objects)
    node = Node(args, docs)
    dss = [d for d in docs if d.get("kind") == "DaemonSet"]
    if args.daemonset:
        dss = [d for d in dss if d["metadata"]["name"] == args.daemonset]
    if len(dss) != 1:
        die(f"expected one DaemonSet, found {len(dss)}")
    ds = dss[0]
    tmpl = copy.deepcopy(ds["spec"]["template"])
    spec = tmpl["spec"]
    meta = {
        "name": args.pod_name or ds["metadata"]["name"] + "-" + args.node_name,
        "namespace": ds["metadata"].get("namespace", "default"),
        "labels": (tmpl.get("metadata") or {}).get("labels") or {},
    }
    # checksum/secrets is for the DaemonSet controller (a changed template rolls the pods),
    # nothing to the kubelet; podman 4.3 refuses an annotation value over 63 characters (it
    # checks them as label values), and a sha256 is 64.
    ann = {k: v for k, v in ((tmpl.get("metadata") or {}).get("annotations") or {}).items() if k != "checksum/secrets"}
    if ann:
        meta["annotations"] = ann

    if spec.get("initContainers"):
        # podman runs init containers "once" by default and then removes them, which 4.3
        # sometimes tries before it has seen them exit ("cannot remove container ... as it
        # is running"); "always" keeps them, exit status included, for the test to check.
        meta.setdefault("annotations", {})["io.podman.annotations.init.container.type"] = "always"
    spec["hostNetwork"] = True
    # The kubelet runs init containers once and restarts the others by the pod's policy
    # (Always for a DaemonSet); podman 4.3 applies the pod's policy to init containers too,
    # and with Always it reruns a finished one forever. OnFailure keeps both behaviours
    # for a test: init containers that succeed stay done, failing containers restart.
    spec["restartPolicy"] = "OnFailure"
    for k in ("dnsPolicy",):
        spec.pop(k, None)

    probes = []
    described = {"containers": {}, "hostPaths": {}}
    for group in ("initContainers", "containers"):
        for c in spec.get(group) or []:
            env = resolve_env(node, meta, c)
            for kind in ("livenessProbe", "readinessProbe", "startupProbe"):
                pr = c.pop(kind, None)
                if pr is None:
                    continue
                if "httpGet" not in pr:
                    die(f"container {c['name']}: {kind} is not httpGet, not supported here")
                hg = pr["httpGet"]
                probes.append({
                    "container": c["name"], "kind": kind, "path": hg.get("path", "/"),
                    "port": resolve_port(c, hg["port"]), "scheme": hg.get("scheme", "HTTP"),
                })
            # On the host's network a port list is information only (the kubelet publishes
            # nothing); podman 4.3 refuses port mappings there.
            c.pop("ports", None)
            csc = c.get("securityContext") or {}
            psc = spec.get("securityContext") or {}
            described["containers"][c["name"]] = {
                "group": group, "env": env, "mounts": c.get("volumeMounts") or [],
                "securityContext": csc,
                # What the process runs as (None: the image's USER decides).
                "runAsUser": csc.get("runAsUser", psc.get("runAsUser")),
                "runAsGroup": csc.get("runAsGroup", psc.get("runAsGroup")),
            }

    vols = []
    for v in spec.get("volumes") or []:
        name = v["name"]
        if "hostPath" in v:
            host = node.host_path(v["hostPath"]["path"])
            described["hostPaths"][name] = {"path": v["hostPath"]["path"], "host": host,
                                            "type": v["hostPath"].get("type", "")}
            v = {"name": name, "hostPath": dict(v["hostPath"], path=host)}
        elif "secret" in v or "configMap" in v:
            kind = "Secret" if "secret" in v else "ConfigMap"
            src = v["secret"] if kind == "Secret" else v["configMap"]
            ref = src.get("secretName") if kind == "Secret" else src.get("name")
            root = node.write_volume(name, kind, ref, src.get("items"), src.get("defaultMode", 0o644),
                                     (spec.get("securityContext") or {}).get("fsGroup"))
            v = {"name": name, "hostPath": {"path": root, "type": "Directory"}}
        elif "emptyDir" in v:
            # podman 4.3 plays an emptyDir as a named volume, shared by every pod that names
            # one alike and kept after the pod: a directory of this pod instead (mode 0777,
            # as the kubelet makes it; medium Memory is not reproduced).
            root = os.path.join(node.dir, "volumes", name)
            os.makedirs(root)
            os.chmod(root, 0o777)
            v = {"name": name, "hostPath": {"path": root, "type": "Directory"}}
        else:
            die(f"volume {name}: {[k for k in v if k != 'name']} is not supported here")
        vols.append(v)
    spec["volumes"] = vols

    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": spec}
    with open(args.out, "w", encoding="utf-8") as f:
        yaml.safe_dump(pod, f, sort_keys=False)
    with open(os.path.join(args.dir, "probes.json"), "w", encoding="utf-8") as f:
        json.dump(probes, f, indent=1)
    described["pod"] = meta["name"]
    with open(os.path.join(args.dir, "pod.json"), "w", encoding="utf-8") as f:
        json.dump(described, f, indent=1)


if __name__ == "__main__":
    main()
