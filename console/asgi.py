from __future__ import annotations

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "console.settings")
# The web process pools its Postgres connections (see DATABASES in console/settings.py).
os.environ.setdefault("BATON_DB_POOL", "true")
django_asgi = get_asgi_application()

# Imported after Django is set up: they load models.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402

from agents.mcp.asgi import with_mcp  # noqa: E402
from console.consumers import SameOriginValidator  # noqa: E402
from console.routing import websocket_urlpatterns  # noqa: E402

application = ProtocolTypeRouter(
    {
        # /mcp/ is Baton's MCP endpoint for agents (agents.mcp); the rest is Django.
        "http": with_mcp(django_asgi),
        # Origin must be this console's own scheme, host and port (no cross-site
        # sockets); the session cookie says who is connecting.
        "websocket": SameOriginValidator(AuthMiddlewareStack(URLRouter(websocket_urlpatterns))),
    }
)
