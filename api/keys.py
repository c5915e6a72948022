"""Typed application state: the services ``create_app`` opens, under ``web.AppKey``s."""

from __future__ import annotations

from aiohttp import web

from ingest.channels import ChannelRegistry
from ingest.sessions import SessionManager
from ingest.webrtc import WhipServer
from ingest.ws import IngestHandler
from storage.meta import MetaStore
from storage.objects import ObjectStore
from storage.presign import UrlSigner
from storage.registry import StoreRegistry
from storage.spool import Spool

from .apps import AppDirectory
from .auth import ApiKeys
from .metrics import Histogram
from .settings import Settings
from .webhooks import Notifier

SETTINGS = web.AppKey("settings", Settings)
META = web.AppKey("meta", MetaStore)
STORE = web.AppKey("store", ObjectStore)
SPOOL = web.AppKey("spool", Spool)
SIGNER = web.AppKey("signer", UrlSigner)
API_KEYS = web.AppKey("api_keys", ApiKeys)
SESSIONS = web.AppKey("sessions", SessionManager)
INGEST = web.AppKey("ingest", IngestHandler)
STORES = web.AppKey("stores", StoreRegistry)
UPLOAD_LATENCY = web.AppKey("upload_latency", Histogram)
WRITER_TICKS = web.AppKey("writer_ticks", Histogram)
LOOP_LAG = web.AppKey("loop_lag", Histogram)
CHANNELS = web.AppKey("channels", ChannelRegistry)
APPS = web.AppKey("apps", AppDirectory)
WHIP = web.AppKey("whip", WhipServer)
NOTIFIER = web.AppKey("notifier", Notifier)
