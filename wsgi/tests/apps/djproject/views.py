import threading

from django.db import connection
from django.http import HttpResponse, StreamingHttpResponse
from django.urls import reverse
from django.views.decorators.csrf import csrf_exempt


def index(request):
    return HttpResponse("hello from django")


def hits(request):
    """Counts itself in SQLite, on this thread's connection."""
    with connection.cursor() as cursor:
        cursor.execute("CREATE TABLE IF NOT EXISTS hits (id INTEGER PRIMARY KEY, thread INTEGER)")
        cursor.execute("INSERT INTO hits (thread) VALUES (%s)", [threading.get_ident()])
        cursor.execute("SELECT count(*) FROM hits")
        (count,) = cursor.fetchone()
    return HttpResponse(str(count), content_type="text/plain")


def stream(request):
    """Rows read from the database while the response streams."""
    def rows():
        with connection.cursor() as cursor:
            cursor.execute("SELECT 1 UNION ALL SELECT 2 UNION ALL SELECT 3")
            for (n,) in cursor.fetchall():
                yield "row %d\n" % n
    return StreamingHttpResponse(rows(), content_type="text/plain")


@csrf_exempt
def echo(request):
    return HttpResponse(request.body, content_type="application/octet-stream")


def url(request):
    return HttpResponse(reverse("index"), content_type="text/plain")
