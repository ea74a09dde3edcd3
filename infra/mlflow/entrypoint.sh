#!/bin/sh
# Starts the MLflow server of docker-compose.yaml with its passwords read from Docker secrets
# (/run/secrets): none is in the compose file, the image, or a command line.
set -eu

secret() { tr -d '\n' < "/run/secrets/$1"; }

MLFLOW_AUTH_ADMIN_PASSWORD=$(secret mlflow_admin_password)
AWS_ACCESS_KEY_ID=$(secret s3_access_key)
AWS_SECRET_ACCESS_KEY=$(secret s3_secret_key)
export MLFLOW_AUTH_ADMIN_PASSWORD AWS_ACCESS_KEY_ID AWS_SECRET_ACCESS_KEY

# The password may hold characters that are special in a URI.
password=$(PGPASS="$(secret postgres_password)" python -c \
  'import os, urllib.parse; print(urllib.parse.quote(os.environ["PGPASS"], safe=""))')
export MLFLOW_BACKEND_STORE_URI="postgresql+psycopg2://${POSTGRES_USER}:${password}@${POSTGRES_HOST}:5432/${POSTGRES_DB}"

# MinIO starts without buckets: create the artifact bucket once.
if [ -n "${MLFLOW_S3_ENDPOINT_URL:-}" ]; then
  python - <<'PY'
import os

import boto3
from botocore.exceptions import ClientError

bucket = os.environ["MLFLOW_ARTIFACTS_DESTINATION"].removeprefix("s3://").split("/")[0]
s3 = boto3.client("s3", endpoint_url=os.environ["MLFLOW_S3_ENDPOINT_URL"])
try:
    s3.head_bucket(Bucket=bucket)
except ClientError:
    s3.create_bucket(Bucket=bucket)
PY
fi

# 0.0.0.0 inside the container only: compose publishes the port on MLFLOW_BIND (127.0.0.1 by default).
set -- --host 0.0.0.0 --port 5000 --artifacts-destination "$MLFLOW_ARTIFACTS_DESTINATION" \
  --app-name basic-auth --workers "${MLFLOW_WORKERS:-4}"
# Host headers MLflow accepts: its default is localhost and private addresses.
if [ -n "${MLFLOW_ALLOWED_HOSTS:-}" ]; then
  set -- "$@" --allowed-hosts "$MLFLOW_ALLOWED_HOSTS"
fi
exec mlflow server "$@"
