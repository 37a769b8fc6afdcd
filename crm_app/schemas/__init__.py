"""Request and response schemas of the JSON API, and the OpenAPI document built from them."""

from crm_app.schemas.openapi import API_SECURITY, OPTIONAL_BODY, openapi_document, spec

__all__ = ["API_SECURITY", "OPTIONAL_BODY", "openapi_document", "spec"]
