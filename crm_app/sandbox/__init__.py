"""amoCRM API v4 sandbox: an offline HTTP emulator for tests, benchmarks and the demo."""

from crm_app.sandbox.config import SandboxConfig
from crm_app.sandbox.server import SandboxServer
from crm_app.sandbox.state import Sandbox

__all__ = ["Sandbox", "SandboxConfig", "SandboxServer"]
