from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("hits", views.hits, name="hits"),
    path("stream", views.stream, name="stream"),
    path("echo", views.echo, name="echo"),
    path("url", views.url, name="url"),
]
