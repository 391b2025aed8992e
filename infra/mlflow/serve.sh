#!/usr/bin/env bash
# The team MLflow server behind MLflow's basic-auth app (the image's entrypoint; runs as it is on a host too).
#
# Everything secret comes from the environment, never from a file in the repository:
#   MLFLOW_BACKEND_STORE_URI         runs and the model registry (postgresql://user:password@host/db)
#   MLFLOW_ARTIFACTS                 where artifacts go, proxied by the server (s3://bucket/prefix)
#   MLFLOW_AUTH_ADMIN_PASSWORD       the admin's password, which creates the admin on the first start and replaces
#                                    an admin password left at a known default on a later one
#   MLFLOW_FLASK_SERVER_SECRET_KEY   the CSRF key of the sign-up form (the same on every replica)
# Optional: MLFLOW_AUTH_DATABASE_URI (users and permissions; default: the backend store's database, its own
# tables), MLFLOW_AUTH_ADMIN_USERNAME (admin), MLFLOW_AUTH_DEFAULT_PERMISSION (READ: a signed-in user reads
# everything and changes only what it created or was granted), MLFLOW_HOST, MLFLOW_PORT,
# MLFLOW_SERVER_ENABLE_JOB_EXECUTION (false: see below).
# Anonymous requests get 401. Extra arguments go to `mlflow server` (e.g. --workers 4).
set -euo pipefail

fail() { echo "serve.sh: $*" >&2; exit 2; }
for name in MLFLOW_BACKEND_STORE_URI MLFLOW_ARTIFACTS MLFLOW_AUTH_ADMIN_PASSWORD MLFLOW_FLASK_SERVER_SECRET_KEY; do
  [ -n "${!name:-}" ] || fail "set $name (see the head of infra/mlflow/serve.sh); refusing to serve without it"
done
# the admin password MLflow once shipped in basic_auth.ini is public: never serve with it
case "$MLFLOW_AUTH_ADMIN_PASSWORD" in
  password1234) fail "MLFLOW_AUTH_ADMIN_PASSWORD is MLflow's old public default; choose another (12+ characters)" ;;
esac
[ "${#MLFLOW_AUTH_ADMIN_PASSWORD}" -ge 12 ] || fail "MLFLOW_AUTH_ADMIN_PASSWORD needs 12 or more characters"
[ "${#MLFLOW_FLASK_SERVER_SECRET_KEY}" -ge 16 ] || fail "MLFLOW_FLASK_SERVER_SECRET_KEY needs 16 or more characters"

# MLflow's job runner (GenAI jobs: prompt optimisation, judges, trace roll-ups) is off: the pipeline runs none, and
# on it each replica starts a runner and Huey consumers, every one a Python process that imports MLflow
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"

# MLflow reads its auth settings from an ini file: written here, readable by this user only, gone on exit
conf=$(mktemp -d)
trap 'rm -rf "$conf"' EXIT
umask 077
cat > "$conf/basic_auth.ini" <<INI
[mlflow]
default_permission = ${MLFLOW_AUTH_DEFAULT_PERMISSION:-READ}
database_uri = ${MLFLOW_AUTH_DATABASE_URI:-$MLFLOW_BACKEND_STORE_URI}
admin_username = ${MLFLOW_AUTH_ADMIN_USERNAME:-admin}
authorization_function = mlflow.server.auth:authenticate_request_basic_auth
INI
export MLFLOW_AUTH_CONFIG_PATH="$conf/basic_auth.ini"

# not exec: the trap removes the ini when the server stops; signals are passed on to it
mlflow server --app-name basic-auth --host "${MLFLOW_HOST:-0.0.0.0}" --port "${MLFLOW_PORT:-5000}" \
  --backend-store-uri "$MLFLOW_BACKEND_STORE_URI" --artifacts-destination "$MLFLOW_ARTIFACTS" --serve-artifacts \
  "$@" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null' TERM INT
wait "$server" || status=$?
wait "$server" 2>/dev/null || true
exit "${status:-0}"
