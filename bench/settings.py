"""The console's settings with the benchmark's floor URL mounted (bench.urls); only the
web process a benchmark starts uses them (DJANGO_SETTINGS_MODULE=bench.settings)."""

from console.settings import *  # noqa: F403

ROOT_URLCONF = "bench.urls"
