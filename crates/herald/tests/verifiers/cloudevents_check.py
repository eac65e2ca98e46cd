"""Parses a captured request with the official CloudEvents SDK and prints its attributes as JSON.

Exits 1 (with the SDK's error) when the request is not a valid CloudEvent.
"""
import json
import pathlib
import sys

from cloudevents.http import from_http

directory = pathlib.Path(sys.argv[1])
headers = json.loads((directory / "headers.json").read_text())
body = (directory / "body").read_bytes()
try:
    event = from_http(headers, body)
except Exception as error:  # the SDK raises several kinds; any of them means "not valid"
    print(f"not a CloudEvent: {error}", file=sys.stderr)
    sys.exit(1)
data = event.data
if isinstance(data, (bytes, bytearray)):
    data = json.loads(data)
attributes = {name: event[name] for name in ("specversion", "id", "source", "type", "time") if name in event}
print(json.dumps({"attributes": attributes, "data": data}))
