"""Check a DVC remote on S3 (or an S3-compatible server) before pushing: one line that names what is wrong.

`python -m flowerpipe.scale.remote [REMOTE]` in a project: `ok: ...` and exit 0, or `error: ...` and exit 1, for
the credentials the server refuses, a bucket that does not exist, an endpoint that does not answer. It reads the
remote as `dvc push` does (.dvc/config, .dvc/config.local, else the AWS_* variables and ~/.aws).
"""

from __future__ import annotations

import sys
from pathlib import Path
from urllib.parse import urlparse

from flowerpipe.errors import UserError, exit_code


def remote_config(repo: str | Path = ".", name: str | None = None) -> tuple[str, dict]:
    """(name, settings) of a DVC remote of the project at repo: the one named, else the default (core.remote)."""
    from dvc.exceptions import NotDvcRepoError
    from dvc.repo import Repo

    try:
        project = Repo(str(repo))
    except NotDvcRepoError:
        raise UserError(f"{Path(repo).resolve()}: not a DVC project (run this where .dvc/ is)") from None
    with project:
        config = project.config
        name = name or config["core"].get("remote")
        if not name:
            raise UserError(f"{Path(repo).resolve()}: no DVC remote named and no default one "
                            "(dvc remote add -d NAME URL)")
        if name not in config["remote"]:
            raise UserError(f"{Path(repo).resolve()}: no DVC remote named {name!r} (dvc remote list shows the others)")
        return name, dict(config["remote"][name])


def s3_client(settings: dict):
    """A botocore S3 client with the remote's endpoint, region and credentials (the default chain where unset)."""
    import botocore.config
    import botocore.session

    session = botocore.session.Session(profile=settings.get("profile"))
    return session.create_client(
        "s3", endpoint_url=settings.get("endpointurl"), region_name=settings.get("region") or "us-east-1",
        aws_access_key_id=settings.get("access_key_id"), aws_secret_access_key=settings.get("secret_access_key"),
        aws_session_token=settings.get("session_token"),
        config=botocore.config.Config(connect_timeout=5, read_timeout=10, retries={"max_attempts": 1}))


def check(repo: str | Path = ".", name: str | None = None) -> str:
    """One line saying the remote's bucket answers with these credentials; UserError with one line otherwise."""
    import botocore.exceptions

    name, settings = remote_config(repo, name)
    url = settings["url"]
    parsed = urlparse(url)
    if parsed.scheme != "s3":
        raise UserError(f"DVC remote {name!r} is {url}, not s3://: this check is for S3 remotes")
    bucket, where = parsed.netloc, settings.get("endpointurl") or "AWS S3"
    key = settings.get("access_key_id")
    try:
        s3_client(settings).head_bucket(Bucket=bucket)
    except botocore.exceptions.NoCredentialsError:
        raise UserError(f"DVC remote {name!r} ({url} at {where}): no credentials: set access_key_id and "
                        "secret_access_key with `dvc remote modify --local`, or AWS_ACCESS_KEY_ID and "
                        "AWS_SECRET_ACCESS_KEY") from None
    except botocore.exceptions.EndpointConnectionError:
        raise UserError(f"DVC remote {name!r} ({url}): nothing answers at {where} (endpointurl)") from None
    except botocore.exceptions.ClientError as exc:
        code = str(exc.response.get("Error", {}).get("Code", ""))
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in ("404", "NoSuchBucket") or status == 404:
            raise UserError(f"DVC remote {name!r} ({url}): bucket {bucket!r} does not exist at {where}; create it "
                            "or fix the remote's url") from None
        if code in ("403", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied") or status == 403:
            who = f"access key id {key!r}" if key else "the credentials from the environment"
            raise UserError(f"DVC remote {name!r} ({url}): {where} refused {who} for bucket {bucket!r} "
                            f"(HTTP {status}): check access_key_id and secret_access_key "
                            "(dvc remote modify --local)") from None
        raise UserError(f"DVC remote {name!r} ({url} at {where}): {code or status}: {exc}") from None
    return f"ok: DVC remote {name!r} ({url} at {where}): bucket {bucket!r} answers to access key id {key!r}" \
        if key else f"ok: DVC remote {name!r} ({url} at {where}): bucket {bucket!r} answers"


def main(argv: list[str] | None = None) -> int:
    """`python -m flowerpipe.scale.remote [REMOTE]`: one line, exit 0 when the remote answers, 1 when not."""
    args = sys.argv[1:] if argv is None else argv
    return exit_code(lambda: print(check(".", args[0] if args else None)))


if __name__ == "__main__":
    sys.exit(main())
