#!/usr/bin/env bash
# Self-test of the integration environment (itenv.sh) with curl only, independent of the shim:
# every blob has the gendata content on both instances, each SAS grants exactly what it
# should, anonymous access works on `public` only, and each token-server flow yields a token
# that the HTTPS Azurite accepts (and the wrong credentials are refused the way the real
# services refuse them). It does not test blobswarm itself.
#
# usage: BS_IT_DIR=DIR itenv-check.sh [path/to/bs-gendata]   (after itenv.sh start DIR)
set -euo pipefail

: "${BS_IT_DIR:?set BS_IT_DIR to the directory given to itenv.sh start}"
[ -f "$BS_IT_DIR/env" ] || { echo "itenv-check: no $BS_IT_DIR/env (run itenv.sh start first)" >&2; exit 1; }
# shellcheck source=/dev/null
. "$BS_IT_DIR/env"
GENDATA=${1:-${BS_GENDATA:-$BS_IT_DIR/bs-gendata}}
[ -x "$GENDATA" ] || { echo "itenv-check: bs-gendata not found (pass its path)" >&2; exit 1; }
unset http_proxy https_proxy HTTP_PROXY HTTPS_PROXY ALL_PROXY all_proxy

readonly XV='x-ms-version: 2021-12-02'
readonly UMLAUT='dir/%C3%BCmlaut%20name%20%25.bin' # dir/ümlaut name %.bin, URL-encoded
CURL=(curl -sS --max-time 120 --cacert "$BS_IT_CA_BUNDLE")
PASS=0
FAIL=0

ok() { PASS=$((PASS + 1)); }
bad() {
  FAIL=$((FAIL + 1))
  echo "FAIL: $*" >&2
}

# same_bytes NAME SEED SIZE URL [curl args]: the download equals the gendata stream.
same_bytes() {
  local name=$1 seed=$2 size=$3 url=$4
  shift 4
  if cmp -s <("${CURL[@]}" -f "$@" "$url") <("$GENDATA" --seed "$seed" --size "$size"); then
    ok
  else
    bad "$name: content differs from bs-gendata --seed $seed --size $size"
  fi
}

# status_is NAME EXPECTED URL [curl args]: HTTP status (and x-ms-error-code, when given as
# STATUS:CODE) of a GET.
status_is() {
  local name=$1 want=$2 url=$3 got hdrs
  shift 3
  hdrs=$("${CURL[@]}" -o /dev/null -D - "$@" "$url" | tr -d '\r') || { bad "$name: curl failed"; return; }
  got=$(sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p' <<<"$hdrs")
  if [[ $want == *:* ]]; then
    got="$got:$(sed -n 's/^x-ms-error-code: *//Ip' <<<"$hdrs")"
  fi
  if [ "$got" = "$want" ]; then ok; else bad "$name: got $got, want $want"; fi
}

# token FLOW: prints an access token from the token server's endpoint for FLOW.
token() {
  local body
  case $1 in
    client_secret)
      body=$(curl -sS -f -X POST "$BS_IT_TOKEN_URL/$BS_IT_TENANT/oauth2/v2.0/token" \
        --data-urlencode grant_type=client_credentials --data-urlencode "client_id=$BS_IT_CLIENT_ID" \
        --data-urlencode scope=https://storage.azure.com/.default \
        --data-urlencode "client_secret=$BS_IT_CLIENT_SECRET") ;;
    workload_identity)
      body=$(curl -sS -f -X POST "$BS_IT_TOKEN_URL/$BS_IT_TENANT/oauth2/v2.0/token" \
        --data-urlencode grant_type=client_credentials --data-urlencode "client_id=$BS_IT_CLIENT_ID" \
        --data-urlencode scope=https://storage.azure.com/.default \
        --data-urlencode client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer \
        --data-urlencode "client_assertion@$BS_IT_FEDERATED_TOKEN_FILE") ;;
    imds)
      body=$(curl -sS -f -H 'Metadata: true' \
        "$BS_IT_TOKEN_URL/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://storage.azure.com/") ;;
    appservice)
      body=$(curl -sS -f -H "X-IDENTITY-HEADER: $BS_IT_IDENTITY_HEADER" \
        "$BS_IT_TOKEN_URL/msi/token?api-version=2019-08-01&resource=https://storage.azure.com/") ;;
  esac
  sed -n 's/.*"access_token":"\([^"]*\)".*/\1/p' <<<"$body"
}

issued() { curl -sS -f "$BS_IT_TOKEN_URL/stats" | sed -n "s/.*\"issued\":{[^}]*\"$1\":\([0-9]*\).*/\1/p"; }

# Blob content, both instances, `data` through the container SAS and `public` anonymously.
for inst in HTTPS HTTP; do
  ep_var=BS_IT_${inst}_ENDPOINT sas_var=BS_IT_SERVICE_SAS_${inst}
  ep=${!ep_var} sas=${!sas_var}
  for spec in "small.bin 1 1048699" "$UMLAUT 2 5242887" "tiny.bin 4 8" "empty.bin 5 0"; do
    read -r blob seed size <<<"$spec"
    same_bytes "$inst data/$blob" "$seed" "$size" "$ep/data/$blob?$sas" -H "$XV"
    same_bytes "$inst public/$blob" "$seed" "$size" "$ep/public/$blob" -H "$XV"
  done
  acct_var=BS_IT_ACCOUNT_SAS_${inst}
  same_bytes "$inst other/tiny.bin (account SAS)" 4 8 "$ep/other/tiny.bin?${!acct_var}" -H "$XV"
  same_bytes "$inst data/small.bin (account SAS)" 1 1048699 "$ep/data/small.bin?${!acct_var}" -H "$XV"
  status_is "$inst anonymous read of private data" 403:AuthorizationFailure "$ep/data/tiny.bin" -H "$XV"
done
status_is "HTTP has no big.bin" 404:BlobNotFound "$BS_IT_HTTP_ENDPOINT/data/big.bin?$BS_IT_SERVICE_SAS_HTTP" -H "$XV"

# The 1 GiB blob: all of data/big.bin, and ranges of the server-side copy in public/.
same_bytes "HTTPS data/big.bin" "$BS_IT_BIG_SEED" "$BS_IT_BIG_SIZE" \
  "$BS_IT_HTTPS_ENDPOINT/data/big.bin?$BS_IT_SERVICE_SAS_HTTPS" -H "$XV"
for r in "0 1048576" "$((BS_IT_BIG_SIZE - 1048576 - 5)) 1048581" "536870911 33554433"; do
  read -r off len <<<"$r"
  if cmp -s <("${CURL[@]}" -f -H "$XV" -H "x-ms-range: bytes=$off-$((off + len - 1))" \
    "$BS_IT_HTTPS_ENDPOINT/public/big.bin") \
    <("$GENDATA" --seed "$BS_IT_BIG_SEED" --offset "$off" --size "$len"); then
    ok
  else
    bad "HTTPS public/big.bin range $off+$len differs"
  fi
done

# SAS scope and expiry.
status_is "SAS for other, used on data" 403:AuthorizationFailure \
  "$BS_IT_HTTPS_ENDPOINT/data/tiny.bin?$BS_IT_OTHER_SAS_HTTPS" -H "$XV"
same_bytes "SAS for other, on other" 4 8 "$BS_IT_HTTPS_ENDPOINT/other/tiny.bin?$BS_IT_OTHER_SAS_HTTPS" -H "$XV"
status_is "expired SAS" 403:AuthorizationFailure \
  "$BS_IT_HTTPS_ENDPOINT/data/tiny.bin?$BS_IT_EXPIRED_SAS_HTTPS" -H "$XV"
status_is "missing blob" 404:BlobNotFound "$BS_IT_HTTPS_ENDPOINT/data/nope.bin?$BS_IT_ACCOUNT_SAS_HTTPS" -H "$XV"
status_is "missing container" 404:ContainerNotFound \
  "$BS_IT_HTTPS_ENDPOINT/nope/x.bin?$BS_IT_ACCOUNT_SAS_HTTPS" -H "$XV"

# Bearer tokens from every flow are accepted by the HTTPS Azurite.
for flow in client_secret workload_identity imds appservice; do
  before=$(issued "$flow")
  tok=$(token "$flow") || tok=''
  if [ -z "$tok" ]; then
    bad "token server: no token for $flow"
    continue
  fi
  if [ "$(issued "$flow")" -eq $((before + 1)) ]; then ok; else bad "token server: /stats did not count $flow"; fi
  same_bytes "bearer ($flow) data/small.bin" 1 1048699 "$BS_IT_HTTPS_ENDPOINT/data/small.bin" \
    -H "$XV" -H "Authorization: Bearer $tok"
done
status_is "bearer with a malformed token" 403:AuthenticationFailed \
  "$BS_IT_HTTPS_ENDPOINT/data/tiny.bin" -H "$XV" -H "Authorization: Bearer not-a-jwt"

# The token server refuses what the real services refuse.
entra=("$BS_IT_TOKEN_URL/$BS_IT_TENANT/oauth2/v2.0/token" -X POST
  --data-urlencode grant_type=client_credentials --data-urlencode "client_id=$BS_IT_CLIENT_ID"
  --data-urlencode scope=https://storage.azure.com/.default)
status_is "Entra: wrong secret" 401 "${entra[@]}" --data-urlencode client_secret=wrong
status_is "Entra: wrong assertion" 401 "${entra[@]}" --data-urlencode client_assertion=wrong \
  --data-urlencode client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer
status_is "Entra: wrong tenant" 400 "$BS_IT_TOKEN_URL/other-tenant/oauth2/v2.0/token" "${entra[@]:1}" \
  --data-urlencode "client_secret=$BS_IT_CLIENT_SECRET"
status_is "IMDS: no Metadata header" 400 \
  "$BS_IT_TOKEN_URL/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://storage.azure.com/"
status_is "App Service: wrong identity header" 401 \
  "$BS_IT_TOKEN_URL/msi/token?api-version=2019-08-01&resource=https://storage.azure.com/" \
  -H 'X-IDENTITY-HEADER: wrong'
imds=$(curl -sS -f -H 'Metadata: true' \
  "$BS_IT_TOKEN_URL/metadata/identity/oauth2/token?api-version=2018-02-01&resource=https://storage.azure.com/&client_id=$BS_IT_CLIENT_ID")
if [[ $imds =~ \"expires_in\":\"[0-9]+\" && $imds =~ \"expires_on\":\"[0-9]+\" ]]; then
  ok
else
  bad "IMDS: expires_in/expires_on are not strings: $imds"
fi
appsvc=$(curl -sS -f -H "X-IDENTITY-HEADER: $BS_IT_IDENTITY_HEADER" \
  "$BS_IT_TOKEN_URL/msi/token?api-version=2019-08-01&resource=https://storage.azure.com/")
if [[ $appsvc =~ \"expires_on\":[0-9]+ ]]; then ok; else bad "App Service: expires_on is not a number: $appsvc"; fi

echo "itenv-check: $PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
