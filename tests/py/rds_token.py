"""Checks an RDS auth token the way RDS would, with botocore: the token must be exactly what
generate_db_auth_token makes for that host:port, user, region and keys at the time the token
says it was signed (X-Amz-Date), and that time must be within the last 15 minutes.

    python rds_token.py TOKEN HOST PORT USER REGION ACCESS_KEY SECRET_KEY

Prints "ok", or the reason it is refused (exit status 1).
"""
import datetime
import sys
from urllib.parse import parse_qsl

import boto3
import botocore.auth


def main(token, host, port, user, region, access_key, secret_key):
    query = token.partition("/?")[2]
    params = dict(parse_qsl(query))
    try:
        at = datetime.datetime.strptime(params.get("X-Amz-Date", ""), "%Y%m%dT%H%M%SZ")
    except ValueError:
        return "no X-Amz-Date"
    age = (datetime.datetime.now(datetime.timezone.utc).replace(tzinfo=None) - at).total_seconds()
    if not -60 <= age <= 900:
        return f"signed {int(age)} s ago"
    botocore.auth.get_current_datetime = lambda remove_tzinfo=True: at
    client = boto3.session.Session(aws_access_key_id=access_key, aws_secret_access_key=secret_key,
                                   region_name=region).client("rds")
    want = client.generate_db_auth_token(DBHostname=host, Port=int(port), DBUsername=user, Region=region)
    return None if want == token else "not the token botocore makes for these keys, host, user and time"


if __name__ == "__main__":
    reason = main(*sys.argv[1:8])
    print(reason or "ok")
    sys.exit(1 if reason else 0)
