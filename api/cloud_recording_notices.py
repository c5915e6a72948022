"""What notifications 1 (error) and 2 (warning) of the cloud recording API carry in reelhouse.

That API leaves the codes to its service; these are reelhouse's, each raised at one place in
:mod:`api.cloud_recording` (``docs/cloud_recording.md`` lists them for app developers). The
hundreds say the module: 1xx the recorder (``module`` 0), 2xx the uploader (``module`` 1).
"""

from __future__ import annotations

from enum import IntEnum


class NoticeModule(IntEnum):
    """``details.module``: which part of the service speaks."""

    RECORDER = 0
    UPLOADER = 1


class ErrorLevel(IntEnum):
    """``details.errorLevel`` of an error notification."""

    MEDIUM = 3  # the recording goes on; something it should have done was not done
    MAJOR = 4  # part of the recording is lost (a uid, a file); the rest goes on
    FATAL = 5  # the recording ended: status 20, then notifications 41 and 11


class WarnCode(IntEnum):
    """``details.warnCode`` of a warning (notification 2)."""

    UID_GROUP_FULL = 101  # recorder: a uid is not recorded, subscribeUidGroup's bound is reached
    RESUMED = 102  # recorder: the server restarted; the recording goes on under the same sid
    SPOOL_FULL = 201  # uploader: the server's spool is full, files wait to be handed over
    BACKUPED = 202  # uploader: stop backed the files up to the server's own store


class ErrorCode(IntEnum):
    """``details.errorCode`` of an error (notification 1)."""

    UID_RECORDER_FAILED = 101  # major: one uid's recorder failed; the others go on
    MIX_RECORDER_FAILED = 102  # fatal: the mix recorder failed
    RESUME_FAILED = 103  # fatal: a recording could not go on after a server restart
    FILE_NOT_SPOOLED = 201  # major: a file could not be handed to the uploader (it is lost)
    UPLOAD_UNCONFIRMED = 202  # medium: at stop neither the bucket nor the backup confirmed
