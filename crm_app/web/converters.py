"""URL converters shared by every route."""

from __future__ import annotations

from werkzeug.routing import IntegerConverter, Map

# The id columns are 32-bit integers on PostgreSQL; a larger id cannot exist, and passing it to
# the database raises (a 500) instead of finding nothing (a 404).
INT32_MAX = 2**31 - 1


class BoundedIntConverter(IntegerConverter):
    """`<int:…>` with a default range of 0..2**31-1: anything outside it is a 404 at routing.

    A route naming amoCRM ids (64-bit) widens it explicitly: `<int(max=9223372036854775807):id>`.
    """

    def __init__(
        self,
        map: Map,
        fixed_digits: int = 0,
        min: int | None = None,
        max: int | None = None,
        signed: bool = False,
    ) -> None:
        super().__init__(
            map,
            fixed_digits=fixed_digits,
            min=0 if min is None else min,
            max=INT32_MAX if max is None else max,
            signed=signed,
        )


def register_converters(url_map: Map) -> None:
    """Make the bounded converter the meaning of `<int:…>` for every blueprint."""
    url_map.converters["int"] = BoundedIntConverter
