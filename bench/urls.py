"""The gateway's URLs plus ``POST /bench/bare``: DRF parsing a JSON body and answering 202, nothing else.

It runs in the same Daphne process behind the same middleware, so its throughput is the ceiling the
webhook ingest path is compared with.
"""
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from gateway_project.urls import handler404, handler500  # noqa: F401
from gateway_project.urls import urlpatterns as gateway_urlpatterns


class BareApi(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def post(self, request):
        return Response({"status": "accepted", "size": len(request.data)}, status=202)


urlpatterns = [path("bench/bare", BareApi.as_view()), *gateway_urlpatterns]
