#!/usr/bin/env bash
# Runs a command with exactly the Azure environment of one authentication MODE, pointed at
# the integration environment in $BS_IT_DIR (itenv.sh start). Every other Azure-related
# variable is removed first, so a test exercises the path it names and nothing else, and the
# real Azure endpoints are unreachable by construction: the IMDS base URL always points to
# the local token server (or, in mode public, to a closed local port), never 169.254.169.254.
#
# usage: BS_IT_DIR=DIR run-with-auth.sh MODE -- command [args...]
#
# MODE (storage endpoint: the HTTPS Azurite unless noted; the CA bundle is always given):
#   conn-https         AZURE_STORAGE_CONNECTION_STRING with the account key
#   conn-http          the same for the plain-HTTP Azurite (no CA bundle)
#   conn-sas           AZURE_STORAGE_CONNECTION_STRING=BlobEndpoint=...;SharedAccessSignature=<account SAS>
#   sharedkey          AZURE_STORAGE_ACCOUNT_NAME + AZURE_STORAGE_ACCOUNT_KEY
#   account-sas        AZURE_STORAGE_ACCOUNT_NAME + AZURE_STORAGE_SAS_TOKEN=<account SAS>
#   service-sas        AZURE_STORAGE_ACCOUNT_NAME + AZURE_STORAGE_SAS_TOKEN='?'<SAS for container
#                      data> (with the leading '?' users copy from the portal; the streamer
#                      strips it, so must the shim)
#   public             anonymous: only the endpoint and CA; IMDS points to a closed port so the
#                      managed-identity probe fails fast and the shim falls back to anonymous
#   client-secret      AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET
#   workload-identity  AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_FEDERATED_TOKEN_FILE
#   imds               managed identity through IMDS (system-assigned: no client id)
#   imds-user          IMDS with AZURE_CLIENT_ID (user-assigned identity)
#   appservice         IDENTITY_ENDPOINT=$BS_IT_TOKEN_URL/msi/token + IDENTITY_HEADER
# Modes other than conn-* set BLOBSWARM_BLOB_ENDPOINT (the endpoint override); all modes but
# conn-* and public set AZURE_STORAGE_ACCOUNT_NAME=devstoreaccount1 as a streamer user would;
# token modes also set AZURE_AUTHORITY_HOST=$BS_IT_TOKEN_URL. The BS_IT_* variables of
# DIR/env stay exported for the command's own use.
set -euo pipefail

readonly ACCOUNT=devstoreaccount1
# Nothing listens on port 1 of 127.0.0.1: connections are refused at once.
readonly CLOSED_URL=http://127.0.0.1:1

die() {
  echo "run-with-auth: $*" >&2
  exit 2
}

if [ $# -lt 3 ] || [ "$2" != -- ]; then
  die "usage: BS_IT_DIR=DIR $0 MODE -- command [args...]"
fi
MODE=$1
shift 2
: "${BS_IT_DIR:?run-with-auth: set BS_IT_DIR to the directory given to itenv.sh start}"
[ -f "$BS_IT_DIR/env" ] || die "no $BS_IT_DIR/env: is the integration environment up (itenv.sh start)?"

# Everything that could select another credential, endpoint, proxy or trust store.
for v in $(compgen -e); do
  case $v in
    AZURE_* | MSI_* | IDENTITY_* | IMDS_* | BLOBSWARM_BLOB_ENDPOINT | BLOBSWARM_CA_BUNDLE) unset "$v" ;;
    http_proxy | https_proxy | HTTP_PROXY | HTTPS_PROXY | ALL_PROXY | all_proxy | no_proxy | NO_PROXY) unset "$v" ;;
    CURL_CA_BUNDLE | SSL_CERT_FILE | SSL_CERT_DIR) unset "$v" ;;
  esac
done

# shellcheck source=/dev/null
. "$BS_IT_DIR/env"

export AZURE_POD_IDENTITY_AUTHORITY_HOST=$BS_IT_TOKEN_URL

https_storage() {
  export BLOBSWARM_BLOB_ENDPOINT=$BS_IT_HTTPS_ENDPOINT
  export BLOBSWARM_CA_BUNDLE=$BS_IT_CA_BUNDLE
}

named_account() {
  https_storage
  export AZURE_STORAGE_ACCOUNT_NAME=$ACCOUNT
}

token_mode() {
  named_account
  export AZURE_AUTHORITY_HOST=$BS_IT_TOKEN_URL
}

account_key() {
  local k=${BS_IT_HTTPS_CONN#*AccountKey=}
  echo "${k%%;*}"
}

case $MODE in
  conn-https)
    export AZURE_STORAGE_CONNECTION_STRING=$BS_IT_HTTPS_CONN
    export BLOBSWARM_CA_BUNDLE=$BS_IT_CA_BUNDLE
    ;;
  conn-http)
    export AZURE_STORAGE_CONNECTION_STRING=$BS_IT_HTTP_CONN
    ;;
  conn-sas)
    export AZURE_STORAGE_CONNECTION_STRING="BlobEndpoint=$BS_IT_HTTPS_ENDPOINT;SharedAccessSignature=$BS_IT_ACCOUNT_SAS_HTTPS"
    export BLOBSWARM_CA_BUNDLE=$BS_IT_CA_BUNDLE
    ;;
  sharedkey)
    named_account
    AZURE_STORAGE_ACCOUNT_KEY=$(account_key)
    export AZURE_STORAGE_ACCOUNT_KEY
    ;;
  account-sas)
    named_account
    export AZURE_STORAGE_SAS_TOKEN=$BS_IT_ACCOUNT_SAS_HTTPS
    ;;
  service-sas)
    named_account
    export AZURE_STORAGE_SAS_TOKEN="?$BS_IT_SERVICE_SAS_HTTPS"
    ;;
  public)
    https_storage
    export AZURE_POD_IDENTITY_AUTHORITY_HOST=$CLOSED_URL
    ;;
  client-secret)
    token_mode
    export AZURE_TENANT_ID=$BS_IT_TENANT AZURE_CLIENT_ID=$BS_IT_CLIENT_ID
    export AZURE_CLIENT_SECRET=$BS_IT_CLIENT_SECRET
    ;;
  workload-identity)
    token_mode
    export AZURE_TENANT_ID=$BS_IT_TENANT AZURE_CLIENT_ID=$BS_IT_CLIENT_ID
    export AZURE_FEDERATED_TOKEN_FILE=$BS_IT_FEDERATED_TOKEN_FILE
    ;;
  imds)
    token_mode
    ;;
  imds-user)
    token_mode
    export AZURE_CLIENT_ID=$BS_IT_CLIENT_ID
    ;;
  appservice)
    token_mode
    export IDENTITY_ENDPOINT=$BS_IT_TOKEN_URL/msi/token IDENTITY_HEADER=$BS_IT_IDENTITY_HEADER
    ;;
  *)
    die "unknown mode '$MODE' (conn-https conn-http conn-sas sharedkey account-sas service-sas public client-secret workload-identity imds imds-user appservice)"
    ;;
esac

command -v "$1" >/dev/null || die "command not found: $1 (is it built?)"
exec "$@"
