from django.urls import path

from . import views

urlpatterns = [
    path("links/", views.links, name="links"),
    path("form/", views.form, name="form"),
    path("upload/", views.upload, name="upload"),
    path("stream/", views.stream, name="stream"),
    path("boom/", views.boom, name="boom"),
]
