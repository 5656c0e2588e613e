"""The floor bench's one endpoint: parse a JSON body, answer JSON. No middleware, no DRF."""
import json

from django.http import JsonResponse
from django.urls import path


async def echo(request):
    body = json.loads(request.body) if request.method == "POST" else {}
    return JsonResponse({"status": "accepted", "size": len(body)}, status=202 if body else 200)


urlpatterns = [path("healthz", echo), path("floor/echo", echo)]
