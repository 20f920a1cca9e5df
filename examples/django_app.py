"""angela-queue in a Django project, in one file (settings, view, URLs).

The view enqueues with Django's own connection inside transaction.atomic():
the order row and its task commit together, or neither does. Outside an
atomic block Django runs in autocommit, and the enqueue commits at once.

    ANGELA_QUEUE_DSN=postgresql://... python examples/django_app.py runserver
"""

from __future__ import annotations

import json
import os
import sys

import django
import psycopg
from django.conf import settings
from django.db import connection, transaction
from django.http import HttpRequest, JsonResponse
from django.urls import path

import angela_queue
from angela_queue import task


@task("ship_order", priority=7)
def ship_order(order_id: int, item: str) -> dict:
    return {"order_id": order_id, "shipped": item}


def database_settings(dsn: str) -> dict:
    info = psycopg.conninfo.conninfo_to_dict(dsn)
    return {"ENGINE": "django.db.backends.postgresql", "NAME": info.get("dbname", ""),
            "USER": info.get("user", ""), "PASSWORD": info.get("password", ""),
            "HOST": info.get("host", ""), "PORT": info.get("port", "")}


def configure(dsn: str) -> None:
    if not settings.configured:
        settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["*"], SECRET_KEY="example only",
                           DATABASES={"default": database_settings(dsn)}, USE_TZ=True, MIDDLEWARE=[])
        django.setup()


class Refused(Exception):
    pass


def create_order(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body or b"{}")
    try:
        with transaction.atomic():
            with connection.cursor() as cur:
                cur.execute("INSERT INTO orders (item, quantity) VALUES (%s, %s) RETURNING id",
                            [body["item"], body.get("quantity", 1)])
                order_id = cur.fetchone()[0]
            queued = angela_queue.enqueue("ship_order", {"order_id": order_id, "item": body["item"]},
                                          conn=connection)
            if body.get("quantity", 1) > 100:
                raise Refused("we do not ship more than 100 at once")   # rolls back the order and its task
    except Refused as refused:
        return JsonResponse({"error": str(refused)}, status=422)
    return JsonResponse({"order_id": order_id, "task_id": queued.id})


urlpatterns = [path("orders", create_order)]


if __name__ == "__main__":
    configure(os.environ.get("ANGELA_QUEUE_DSN") or os.environ["DATABASE_URL"])
    from django.core.management import execute_from_command_line
    execute_from_command_line(sys.argv)
