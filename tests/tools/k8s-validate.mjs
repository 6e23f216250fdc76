// Validates Kubernetes objects against the API's schemas, offline: reads a JSON array of
// objects (YAML converted by the caller) on stdin, prints one line per problem, exits 1 if
// there is any. Schemas: kubernetes-models (generated from the Kubernetes OpenAPI) and
// @kubernetes-models/prometheus-operator (from the ServiceMonitor/PodMonitor CRDs), both
// pinned in package-lock.json. It does not talk to a cluster and knows no admission policy.
//
// The generated validators check types, required fields, enums and formats, but the
// Kubernetes schemas do not forbid unknown fields, which the API server rejects (strict field
// validation) or silently drops. So each object is validated through a Proxy that records
// which fields the validator looked at: a field of an object with a known set of fields that
// the validator never read is unknown. Objects the validator enumerates (maps: labels,
// annotations, nodeSelector, ...) accept any key.
//
// Usage: node k8s-validate.mjs [--require-labels] < objects.json
import { readFileSync } from "node:fs";

const MODULES = {
  v1: "kubernetes-models/v1",
  "apps/v1": "kubernetes-models/apps/v1",
  "networking.k8s.io/v1": "kubernetes-models/networking.k8s.io/v1",
  "policy/v1": "kubernetes-models/policy/v1",
  "rbac.authorization.k8s.io/v1": "kubernetes-models/rbac.authorization.k8s.io/v1",
  "monitoring.coreos.com/v1": "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1",
};
const LABELS = [
  "app.kubernetes.io/name",
  "app.kubernetes.io/instance",
  "app.kubernetes.io/version",
  "app.kubernetes.io/managed-by",
  "helm.sh/chart",
];
const DNS1123_SUBDOMAIN = /^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$/;

// Wraps obj so that reads and enumerations of every object inside it are recorded in records.
function track(obj, path, records) {
  if (obj === null || typeof obj !== "object") return obj;
  const rec = { path, obj, read: new Set(), enumerated: false };
  records.push(rec);
  const children = new Map();
  return new Proxy(obj, {
    get(target, key, receiver) {
      const v = Reflect.get(target, key, receiver);
      if (typeof key !== "string") return v;
      rec.read.add(key);
      if (v === null || typeof v !== "object") return v;
      if (!children.has(key)) children.set(key, track(v, `${path}/${key}`, records));
      return children.get(key);
    },
    has(target, key) {
      if (typeof key === "string") rec.read.add(key);
      return Reflect.has(target, key);
    },
    ownKeys(target) {
      rec.enumerated = true;
      return Reflect.ownKeys(target);
    },
  });
}

const requireLabels = process.argv.includes("--require-labels");
const docs = JSON.parse(readFileSync(0, "utf8"));
if (!Array.isArray(docs) || docs.length === 0) {
  console.error("k8s-validate: expected a non-empty JSON array of objects on stdin");
  process.exit(2);
}
let problems = 0;
const problem = (what, msg) => {
  console.log(`${what}: ${msg}`);
  problems++;
};
const seen = new Set();
for (const doc of docs) {
  const what = `${doc?.kind ?? "?"}/${doc?.metadata?.name ?? "?"}`;
  const mod = MODULES[doc?.apiVersion];
  if (!mod) {
    problem(what, `apiVersion ${doc?.apiVersion} is not one this validator knows`);
    continue;
  }
  const models = await import(mod);
  const Model = models[doc.kind];
  if (typeof Model !== "function" || Model.apiVersion !== doc.apiVersion) {
    problem(what, `no kind ${doc.kind} in ${doc.apiVersion}`);
    continue;
  }
  const key = `${doc.apiVersion} ${doc.kind} ${doc.metadata?.namespace ?? ""} ${doc.metadata?.name}`;
  if (seen.has(key)) problem(what, "defined twice");
  seen.add(key);
  const name = doc.metadata?.name;
  if (typeof name !== "string" || name.length > 253 || !DNS1123_SUBDOMAIN.test(name))
    problem(what, `metadata.name ${JSON.stringify(name)} is not a DNS-1123 subdomain`);
  if (requireLabels)
    for (const l of LABELS)
      if (!doc.metadata?.labels?.[l]) problem(what, `label ${l} missing`);

  const records = [];
  const proxied = track(doc, "", records);
  try {
    Model.prototype.validate.call(proxied);
  } catch (e) {
    for (const line of String(e.message).split("\n")) problem(what, line);
    continue; // unknown-field results are unreliable once a branch failed
  }
  for (const r of records) {
    if (Array.isArray(r.obj) || r.enumerated) continue;
    for (const k of Object.keys(r.obj))
      if (!r.read.has(k)) problem(what, `unknown field ${r.path}/${k}`);
  }
}
console.log(`k8s-validate: ${docs.length} object(s), ${problems} problem(s)`);
process.exit(problems ? 1 : 0);
