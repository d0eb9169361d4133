"""S3BlobStore: blobs as objects in an S3-compatible bucket (AWS S3, MinIO, Ceph RGW).

    put(key) ─► PutObject  s3://bucket/<prefix><key> ─► 200: durable
    get(key) ─► GetObject  ─► bytes │ NoSuchKey ─► FileNotFoundError (as the local store)

S3 is strongly consistent (read-after-write, and MinIO likewise), so a put is durable
once S3 answers 200 and any replica's get sees it. A PutObject replaces the object
whole: a replayed frame or two writers of the same bytes leave the same object.
Credentials come from boto3's own chain (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY,
AWS_PROFILE and ~/.aws, an instance or pod role); the cloud has no settings for them.
"""

from __future__ import annotations

from typing import Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

from cloud.store.blobs import check_key

# Up to 32 ingest threads (asyncio's default pool) and the view workers share one client.
MAX_POOL_CONNECTIONS = 32


class S3BlobStore:
    def __init__(
        self,
        bucket: str,
        prefix: str = "",
        *,
        endpoint_url: str | None = None,
        region: str | None = None,
        connect_timeout_s: float = 5.0,
        read_timeout_s: float = 30.0,
        max_attempts: int = 5,
    ) -> None:
        if prefix:
            check_key(prefix.rstrip("/"))
            prefix = prefix.rstrip("/") + "/"
        self.bucket = bucket
        self.prefix = prefix
        config = Config(
            connect_timeout=connect_timeout_s,
            read_timeout=read_timeout_s,
            # Standard mode retries throttling, 5xx and dropped connections with backoff.
            retries={"mode": "standard", "max_attempts": max_attempts},
            max_pool_connections=MAX_POOL_CONNECTIONS,
            # MinIO and most S3-compatible servers serve buckets by path, not by host name
            # (bucket.127.0.0.1 does not resolve); AWS itself picks the style on its own.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        # A session of its own: the default one is shared module state, not thread-safe
        # to create clients from; the client itself is thread-safe.
        session = boto3.session.Session()
        self.client: Any = session.client(
            "s3", endpoint_url=endpoint_url, region_name=region, config=config
        )

    @property
    def url(self) -> str:
        return f"s3://{self.bucket}/{self.prefix}"

    @property
    def endpoint(self) -> str:
        return str(self.client.meta.endpoint_url)

    def _key(self, key: str) -> str:
        return self.prefix + check_key(key)

    def check(self) -> None:
        """Raise OSError naming the bucket and endpoint unless the bucket is usable."""
        try:
            self.client.head_bucket(Bucket=self.bucket)
            return
        except NoCredentialsError:
            reason = (
                "cannot be reached without credentials: set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE, or run with an instance role)"
            )
        except ClientError as exc:
            status = _status(exc)
            if status == 404:
                reason = "does not exist (create it first)"
            elif status == 403:
                reason = "refused access: check the credentials and the bucket's policy"
            elif status == 301:
                region = (
                    exc.response["ResponseMetadata"]
                    .get("HTTPHeaders", {})
                    .get("x-amz-bucket-region", "another region")
                )
                reason = f"is in {region}: set s3_region to it"
            else:
                reason = f"answered {status} {_code(exc)}"
        except BotoCoreError as exc:  # connection refused, timeouts, bad endpoint
            reason = f"cannot be reached: {exc}"
        raise OSError(f"blob_url {self.url}: bucket {self.bucket!r} at {self.endpoint} {reason}")

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def get(self, key: str) -> bytes:
        try:
            reply = self.client.get_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            # A missing bucket is an outage, not a missing blob: let it raise as it is.
            if _code(exc) == "NoSuchKey" or (_status(exc) == 404 and _code(exc) != "NoSuchBucket"):
                raise FileNotFoundError(f"no blob {key!r} in {self.url}") from None
            raise
        body = reply["Body"]
        try:
            return bytes(body.read())
        finally:
            body.close()

    def delete(self, key: str) -> None:
        """Remove a blob nothing references (a lost ingest race); S3 takes a missing key."""
        self.client.delete_object(Bucket=self.bucket, Key=self._key(key))

    def exists(self, key: str) -> bool:
        try:
            self.client.head_object(Bucket=self.bucket, Key=self._key(key))
        except ClientError as exc:
            if _status(exc) == 404:
                return False
            raise
        return True


def _status(exc: ClientError) -> int | None:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
    return int(status) if status is not None else None


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))
