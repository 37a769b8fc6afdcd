"""Subdomain validation, amoCRM URLs and the OAuth callback referer check."""

from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

import pytest

from crm_app.amocrm.errors import AmoCRMConfigError
from crm_app.amocrm.hosts import (
    ALLOWED_DOMAINS,
    AmoHosts,
    is_amocrm_referer,
    normalize_base_url,
    origin_of,
    split_referer,
    validate_api_domain,
    validate_subdomain,
)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("demo", "demo"),
        ("Demo", "demo"),
        ("my-company", "my-company"),
        ("a", "a"),
        ("0day", "0day"),
        ("a" * 63, "a" * 63),
        # Punycode is plain ASCII letters, digits and dashes: nothing in it can steer a request.
        ("xn--d1acufc", "xn--d1acufc"),
    ],
)
def test_valid_subdomains_are_lowercased(raw: str, expected: str) -> None:
    assert validate_subdomain(raw) == expected


@pytest.mark.parametrize(
    "raw",
    [
        "",
        "evil.com/",
        "evil.com",
        "a@b",
        "x.y",
        "demo:80",
        "demo/",
        "/demo",
        "demo?x=1",
        "demo#x",
        " demo",
        "demo ",
        "de mo",
        "demo\n",
        "demo\t",
        "-demo",
        "de_mo",
        "a" * 64,
        "демо",
        "dеmo",  # Cyrillic "е"
        "\u212aelvin",  # Kelvin sign: lower() would turn it into ASCII "k"
        "www",
        "user:pass@evil",
        "127.0.0.1",
        "demo\\evil",
        "%2e%2e",
    ],
)
def test_invalid_subdomains_are_rejected(raw: str) -> None:
    with pytest.raises(AmoCRMConfigError):
        validate_subdomain(raw)


@pytest.mark.parametrize("raw", [None, 5, b"demo", ["demo"]])
def test_non_strings_are_rejected(raw: object) -> None:
    with pytest.raises(AmoCRMConfigError):
        validate_subdomain(raw)


def test_config_error_is_a_value_error() -> None:
    assert issubclass(AmoCRMConfigError, ValueError)


def test_allowed_domains() -> None:
    assert ALLOWED_DOMAINS == ("amocrm.ru", "amocrm.com", "kommo.com")


def test_hosts_default_amocrm_ru() -> None:
    hosts = AmoHosts("Demo")
    assert hosts.subdomain == "demo"
    assert hosts.api_origin == "https://demo.amocrm.ru"
    assert hosts.token_url == "https://demo.amocrm.ru/oauth2/access_token"
    assert hosts.throttle_key == "demo.amocrm.ru"
    assert hosts.account_host == "demo.amocrm.ru"


def test_hosts_kommo() -> None:
    hosts = AmoHosts("acme", "kommo.com")
    assert hosts.api_origin == "https://acme.kommo.com"
    url = hosts.authorize_url("cid", "st4te", "popup")
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc, parts.path) == ("https", "www.kommo.com", "/oauth")
    assert parse_qs(parts.query) == {"client_id": ["cid"], "state": ["st4te"], "mode": ["popup"]}


def test_authorize_url_escapes_and_checks_mode() -> None:
    hosts = AmoHosts("demo")
    url = hosts.authorize_url("c&id=x", "a b", "post_message")
    assert url.startswith("https://www.amocrm.ru/oauth?")
    assert parse_qs(urlsplit(url).query)["client_id"] == ["c&id=x"]
    with pytest.raises(AmoCRMConfigError):
        hosts.authorize_url("cid", "s", "redirect")


@pytest.mark.parametrize("domain", ["evil.com", "amocrm.ru.evil.com", "", "www.amocrm.ru"])
def test_unknown_domains_are_rejected(domain: str) -> None:
    with pytest.raises(AmoCRMConfigError):
        AmoHosts("demo", domain)


def test_base_url_sends_everything_to_one_origin() -> None:
    hosts = AmoHosts("demo", base_url="http://127.0.0.1:8100/")
    assert hosts.api_origin == "http://127.0.0.1:8100"
    assert hosts.token_url == "http://127.0.0.1:8100/oauth2/access_token"
    assert hosts.authorize_url("cid", "s").startswith("http://127.0.0.1:8100/oauth?")
    assert (
        hosts.subdomain_lookup_url("api-b.amocrm.ru")
        == "http://127.0.0.1:8100/oauth2/account/current/subdomain"
    )
    # The rate budget stays per account, not per override origin.
    assert hosts.throttle_key == "demo.amocrm.ru"


@pytest.mark.parametrize(
    "url",
    [
        "ftp://127.0.0.1",
        "127.0.0.1:8100",
        "http://",
        "http://u:p@127.0.0.1:8100",
        "http://127.0.0.1:8100/api",
        "http://127.0.0.1:8100?x=1",
        "http://127.0.0.1:8100#f",
        "http://127.0.0.1:notaport",
    ],
)
def test_bad_base_urls_are_rejected(url: str) -> None:
    with pytest.raises(AmoCRMConfigError):
        normalize_base_url(url)


def test_same_origin() -> None:
    hosts = AmoHosts("demo")
    assert hosts.is_same_origin("https://demo.amocrm.ru/api/v4/contacts?page=2")
    assert hosts.is_same_origin("https://DEMO.amocrm.ru:443/api/v4/contacts")
    assert not hosts.is_same_origin("http://demo.amocrm.ru/api/v4/contacts")
    assert not hosts.is_same_origin("https://demo.amocrm.ru.evil.com/api/v4/contacts")
    assert not hosts.is_same_origin("https://evil@demo.amocrm.ru/api/v4/contacts")
    assert not hosts.is_same_origin("https://shard151.amocrm.ru/api/v4/contacts")
    assert not hosts.is_same_origin("/api/v4/contacts")
    assert origin_of("https://a.b:8443/x") == "https://a.b:8443"


@pytest.mark.parametrize(
    ("referer", "expected"),
    [
        ("demo.amocrm.ru", ("demo", "amocrm.ru")),
        ("Demo.AmoCRM.ru", ("demo", "amocrm.ru")),
        ("acme.amocrm.com", ("acme", "amocrm.com")),
        ("acme.kommo.com", ("acme", "kommo.com")),
    ],
)
def test_referer_accepted(referer: str, expected: tuple[str, str]) -> None:
    assert is_amocrm_referer(referer)
    assert split_referer(referer) == expected
    assert AmoHosts.from_referer(referer).account_host == ".".join(expected)


@pytest.mark.parametrize(
    "referer",
    [
        "",
        None,
        "amocrm.ru",
        ".amocrm.ru",
        "www.amocrm.ru",
        "evil.com",
        "demo.amocrm.ru.evil.com",
        "evil.com/demo.amocrm.ru",
        "a.b.amocrm.ru",
        "demo.amocrm.ru:443",
        "https://demo.amocrm.ru",
        "demo.amocrm.ru/",
        "demo.amocrm.ru.",
        "user@demo.amocrm.ru",
        "demo.amocrm.org",
        "демо.amocrm.ru",
        " demo.amocrm.ru",
    ],
)
def test_referer_rejected(referer: object) -> None:
    assert not is_amocrm_referer(referer)
    with pytest.raises(AmoCRMConfigError):
        split_referer(referer)


def test_api_domain_claim_validation() -> None:
    assert validate_api_domain("api-b.amocrm.ru") == "api-b.amocrm.ru"
    assert validate_api_domain("https://api-c.kommo.com/") == "api-c.kommo.com"
    for bad in ("evil.com", "api-b.amocrm.ru.evil.com", "api-b.amocrm.ru:81", "", None):
        with pytest.raises(AmoCRMConfigError):
            validate_api_domain(bad)
    assert (
        AmoHosts("demo").subdomain_lookup_url("api-a.amocrm.ru")
        == "https://api-a.amocrm.ru/oauth2/account/current/subdomain"
    )


def test_with_account_keeps_override() -> None:
    hosts = AmoHosts("old", base_url="http://127.0.0.1:9")
    renamed = hosts.with_account("new", "kommo.com")
    assert renamed.account_host == "new.kommo.com"
    assert renamed.base_url == "http://127.0.0.1:9"
