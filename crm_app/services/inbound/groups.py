"""Who is who inside one batch: requests of one human become one unit (in-window dedup).

amoCRM's ``leads/complex`` does not compare the items of one request with each other, so two
messages of the same person in one window would make two contacts and two deals. Requests are
joined when they share the person row (channel + external id), the Telegram id, the phone (E.164)
or the e-mail (lower case), transitively: the same human on three channels is one unit.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from crm_app.amocrm.fields import normalize_email, normalize_phone
from crm_app.models import InboundRequest


def identities(req: InboundRequest) -> list[tuple[str, str]]:
    """The keys a request is matched on, strongest first: Telegram id, phone, e-mail."""
    out: list[tuple[str, str]] = []
    if req.channel == "telegram":
        out.append(("telegram", req.external_id))
    phone = normalize_phone(req.payload.get("phone"))
    if phone:
        out.append(("phone", phone))
    email = normalize_email(req.payload.get("email"))
    if email:
        out.append(("email", email))
    return out


@dataclass
class Unit:
    """The requests of one human in a batch, oldest first."""

    requests: list[InboundRequest]
    person_ids: list[int] = field(default_factory=list)

    @property
    def first(self) -> InboundRequest:
        return self.requests[0]

    def identities(self) -> list[tuple[str, str]]:
        seen: list[tuple[str, str]] = []
        for kind in ("telegram", "phone", "email"):
            for req in self.requests:
                for key in identities(req):
                    if key[0] == kind and key not in seen:
                        seen.append(key)
        return seen


def group(requests: Sequence[InboundRequest]) -> list[Unit]:
    """Join requests that share a person or an identity (union-find); units keep arrival order."""
    parent = list(range(len(requests)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    owner_of: dict[tuple[str, str], int] = {}
    for index, req in enumerate(requests):
        keys = [("person", str(req.person_id)), *identities(req)]
        for key in keys:
            other = owner_of.setdefault(key, index)
            a, b = find(index), find(other)
            if a != b:
                parent[max(a, b)] = min(a, b)
    units: dict[int, Unit] = {}
    for index, req in enumerate(requests):
        unit = units.setdefault(find(index), Unit([]))
        unit.requests.append(req)
        if req.person_id is not None and req.person_id not in unit.person_ids:
            unit.person_ids.append(req.person_id)
    return sorted(units.values(), key=lambda u: u.first.id)
