"""Views exercising what a Django app needs from its server."""

import hashlib

from django.http import JsonResponse, StreamingHttpResponse
from django.urls import reverse


def links(request):
    return JsonResponse({"self": reverse("links"),
                         "absolute": request.build_absolute_uri(reverse("form"))})


def form(request):
    return JsonResponse({"method": request.method, "fields": dict(request.POST.lists())})


def upload(request):
    files = {name: {"filename": f.name, "sha256": hashlib.sha256(f.read()).hexdigest()}
             for name, f in request.FILES.items()}
    return JsonResponse({"files": files, "fields": request.POST.dict()})


def stream(request):
    return StreamingHttpResponse((b"part %d\n" % i for i in range(5)), content_type="text/plain")


def boom(request):
    raise RuntimeError("boom from the django test app")
