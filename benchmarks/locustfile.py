"""Load profile for `locust`: users register, log in, then mostly read and sometimes write notes.

    .venv/bin/locust -f benchmarks/locustfile.py --headless -u 50 -r 10 -t 60s \
        --host http://127.0.0.1:8000

Run it against a server whose rate limit fits the load (STALWART_RATE_LIMIT), on loopback
or a staging host; never against production.
"""

from __future__ import annotations

import uuid

from locust import HttpUser, between, task


class NotesUser(HttpUser):
    wait_time = between(0.01, 0.1)

    def on_start(self) -> None:
        email = f"load-{uuid.uuid4().hex[:12]}@example.com"
        password = f"load-{uuid.uuid4().hex}"
        self.client.post(
            "/api/v1/accounts", json={"email": email, "password": password, "display_name": "load"}
        )
        r = self.client.post("/api/v1/auth/tokens", json={"email": email, "password": password})
        self.client.headers["Authorization"] = f"Bearer {r.json()['token']}"
        self.note_ids: list[str] = []

    @task(1)
    def create_note(self) -> None:
        r = self.client.post("/api/v1/notes", json={"title": "load", "body": "x" * 200, "tags": ["load"]})
        if r.status_code == 201:
            self.note_ids.append(r.json()["id"])

    @task(6)
    def list_notes(self) -> None:
        self.client.get("/api/v1/notes?limit=20")

    @task(3)
    def read_note(self) -> None:
        if self.note_ids:
            self.client.get(f"/api/v1/notes/{self.note_ids[-1]}", name="/api/v1/notes/{id}")

    @task(1)
    def health(self) -> None:
        self.client.get("/health")
