"""Project-wide 400/404/500 handlers: JSON error bodies for API paths, plain pages elsewhere."""
from django.http import HttpResponse, JsonResponse
from django.views.defaults import bad_request, page_not_found, server_error


def _is_api(request) -> bool:
    return request.path.startswith(("/api/", "/v1/"))


def json_400(request, exception=None):
    """A request Django refused before any view (a Host header not in ALLOWED_HOSTS, ...)."""
    if _is_api(request):
        return JsonResponse({"error": {"code": "invalid_request", "message": "Bad request."}}, status=400)
    return bad_request(request, exception)


def json_404(request, exception=None):
    if _is_api(request):
        return JsonResponse({"error": {"code": "not_found", "message": "Not found."}}, status=404)
    return page_not_found(request, exception)


def json_500(request):
    if _is_api(request):
        return JsonResponse(
            {"error": {"code": "internal_error", "message": "Something went wrong on our side."}},
            status=500,
        )
    try:
        return server_error(request)
    except Exception:
        return HttpResponse("Server error", status=500)
