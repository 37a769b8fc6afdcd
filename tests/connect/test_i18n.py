"""Russian by default; English through ?lang=en (Flask-Babel), remembered in the session."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.connect.conftest import HX


def test_page_in_russian_then_english(app, client, owner, login, page_csrf) -> None:
    login("alice")
    ru = client.get("/admin/crm").get_data(as_text=True)
    assert '<html lang="ru">' in ru and "Настройки" in ru and "Не подключено" in ru
    en = client.get("/admin/crm?lang=en").get_data(as_text=True)
    assert '<html lang="en">' in en
    for text in ("Settings", "Not connected", "Sync log", "Statistics", "amoCRM account"):
        assert text in en, text
    assert "Настройки" not in en
    # The choice sticks for the partials and for validation messages.
    resp = client.post(
        "/admin/crm/ui/settings",
        data={"csrf_token": page_csrf(), "subdomain": "bad host"},
        headers=HX,
    )
    assert resp.status_code == 422
    assert "subdomain: Latin letters" in resp.get_data(as_text=True)
    assert "Sign in" in client.get("/login?lang=en").get_data(as_text=True)


ROOT = Path(__file__).resolve().parents[2]
CATALOG = ROOT / "translations" / "en" / "LC_MESSAGES"


def _extracted() -> set[str]:
    """Every message the code and templates use, extracted as `pybabel extract` does it
    (babel.cfg, plus the service markers `_t` and `_n`)."""
    from babel.messages.extract import DEFAULT_KEYWORDS, extract_from_dir
    from babel.messages.frontend import parse_mapping_cfg

    with open(ROOT / "babel.cfg") as fh:
        method_map, options_map = parse_mapping_cfg(fh)
    keywords = {**DEFAULT_KEYWORDS, "_t": None, "_n": None}
    found: set[str] = set()
    for pattern, method in method_map:
        subdir, rel = pattern.split("/", 1)
        for _file, _line, message, _comments, _ctx in extract_from_dir(
            ROOT / subdir,
            method_map=[(rel, method)],
            options_map={rel: options_map.get(pattern, {})},
            keywords=keywords,
        ):
            found.add(message[0] if isinstance(message, tuple) else message)
    return found


def test_every_message_has_an_english_translation() -> None:
    from babel.messages.pofile import read_po

    with open(CATALOG / "messages.po", "rb") as fh:
        catalog = read_po(fh)
    translated = {
        (m.id[0] if isinstance(m.id, tuple) else m.id)
        for m in catalog
        if m.id and (all(m.string) if isinstance(m.string, tuple) else m.string)
    }
    extracted = _extracted()
    # The extraction itself works (a wrong pattern would find nothing and pass vacuously).
    assert "Синхронизировать" in extracted and "Настройки сохранены" in extracted
    missing = sorted(extracted - translated)
    assert not missing, (
        "untranslated (extract, update, translate, compile — see docs/connect.md): "
        + "; ".join(missing)
    )


def test_the_compiled_catalog_matches_the_po_file() -> None:
    from babel.messages.mofile import read_mo
    from babel.messages.pofile import read_po

    def _pairs(catalog: Any) -> dict[Any, Any]:
        def plain(value: Any) -> Any:
            return value if isinstance(value, str) else tuple(value)

        return {plain(m.id): plain(m.string) for m in catalog if m.id}

    with open(CATALOG / "messages.po", "rb") as fh:
        po = _pairs(read_po(fh))
    with open(CATALOG / "messages.mo", "rb") as fh:
        mo = _pairs(read_mo(fh))
    assert po == mo, "run: .venv/bin/pybabel compile -d translations"
