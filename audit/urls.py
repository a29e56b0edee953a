from __future__ import annotations

from django.urls import path

from audit import evidence, views

urlpatterns = [
    path("", views.events, name="audit"),
    path("events/<int:seq>/", views.event, name="audit-event"),
    path("runs/<int:run_id>/", views.run_chain, name="audit-run-chain"),
    path("runs/<int:run_id>/actions/<int:step>/", views.action_chain, name="audit-action-chain"),
    path("export", evidence.export, name="audit-export"),
    path("public-key.pem", evidence.public_key, name="audit-public-key"),
    path("verifier.py", evidence.verifier, name="audit-verifier"),
    path("verifier.js", evidence.verifier_js, name="audit-verifier-js"),
    path("format.md", evidence.format_doc, name="audit-format"),
    path("checkpoint", evidence.checkpoint, name="audit-checkpoint"),
    path("verify", evidence.verify, name="audit-verify"),
    path("integrity", evidence.badge, name="audit-integrity"),
]
