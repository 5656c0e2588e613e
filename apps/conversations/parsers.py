"""The JSON parser of the gateway's DRF views (messages API, OpenAI face)."""
from __future__ import annotations

from rest_framework.exceptions import ParseError
from rest_framework.parsers import JSONParser, get_encoding
from rest_framework.utils import json

from gateway_project.json_limits import TooDeep, check_depth


class BoundedJSONParser(JSONParser):
    """DRF's JSONParser, refusing documents nested deeper than GATEWAY_JSON_MAX_DEPTH before
    parsing them (a 400 ``invalid_request``, where a deep one used to be a RecursionError: a 500)."""

    def parse(self, stream, media_type=None, parser_context=None):
        encoding = get_encoding(parser_context or {})
        try:
            text = stream.read().decode(encoding)
            check_depth(text)
            parse_constant = json.strict_constant if self.strict else None
            return json.loads(text, parse_constant=parse_constant)
        except TooDeep as exc:
            raise ParseError(str(exc)) from None
        except RecursionError:
            raise ParseError("The JSON nests too deeply.") from None
        except ValueError as exc:  # UnicodeDecodeError included
            raise ParseError(f"JSON parse error - {exc}") from None
