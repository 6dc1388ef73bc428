"""Value sets the simulated jobs draw from, and the job state machine.

Codes stored in the simulator's columns are indexes into these tuples, so their
order is part of the deterministic output: append, never reorder.
"""

from __future__ import annotations

from pipelines.contract import TERMINAL_STATES

STATES: tuple[str, ...] = (
    "CREATING",
    "SYSTEM_AUDITING",
    "AUDITING",
    "WAITING_SPLIT",
    "SPLITTING",
    "ANNOTATING",
    "WAITING",
    "PROCESSING",
    "RESULT_REVIEW",
    "USER_RESULT_REVIEW",
    "UPLOADING",
    "SUCCEED",
    "FAILED",
    "AUDIT_FAILED",
    "SPLIT_FAILED",
    "USER_REVIEW_REJECT",
)
STATE_CODE = {name: code for code, name in enumerate(STATES)}
TERMINAL = TERMINAL_STATES
# The pipeline a job walks through when nothing goes wrong.
PIPELINE: tuple[str, ...] = STATES[:12]

# state -> ((next state, probability), ...); mean dwell in seconds before moving on.
TRANSITIONS: dict[str, tuple[tuple[str, float], ...]] = {
    "CREATING": (("SYSTEM_AUDITING", 0.98), ("FAILED", 0.02)),
    "SYSTEM_AUDITING": (("AUDITING", 0.95), ("AUDIT_FAILED", 0.05)),
    "AUDITING": (("WAITING_SPLIT", 0.93), ("AUDIT_FAILED", 0.07)),
    "WAITING_SPLIT": (("SPLITTING", 1.0),),
    "SPLITTING": (("ANNOTATING", 0.95), ("SPLIT_FAILED", 0.05)),
    "ANNOTATING": (("WAITING", 1.0),),
    "WAITING": (("PROCESSING", 1.0),),
    "PROCESSING": (("RESULT_REVIEW", 0.92), ("FAILED", 0.08)),
    "RESULT_REVIEW": (("USER_RESULT_REVIEW", 1.0),),
    "USER_RESULT_REVIEW": (("UPLOADING", 0.85), ("USER_REVIEW_REJECT", 0.15)),
    "UPLOADING": (("SUCCEED", 0.97), ("FAILED", 0.03)),
    # States waiting for the user: they move on once the user acts.
    "AUDIT_FAILED": (("SYSTEM_AUDITING", 1.0),),
    "SPLIT_FAILED": (("WAITING_SPLIT", 1.0),),
    "USER_REVIEW_REJECT": (("WAITING", 0.7), ("ANNOTATING", 0.3)),
}
MEAN_DWELL_SECONDS: dict[str, float] = {
    "CREATING": 120,
    "SYSTEM_AUDITING": 600,
    "AUDITING": 4 * 3600,
    "WAITING_SPLIT": 1800,
    "SPLITTING": 3600,
    "ANNOTATING": 12 * 3600,
    "WAITING": 2 * 3600,
    "PROCESSING": 8 * 3600,
    "RESULT_REVIEW": 6 * 3600,
    "USER_RESULT_REVIEW": 24 * 3600,
    "UPLOADING": 1800,
    "AUDIT_FAILED": 3 * 86400,
    "SPLIT_FAILED": 2 * 86400,
    "USER_REVIEW_REJECT": 2 * 86400,
}

JOB_TYPES: tuple[str, ...] = ("BASIC", "MIDDLE", "ADVANCE", "THIRD_PARTY", "THIRD_PARTY_LJZN", "FLEXUS")
JOB_TYPE_WEIGHTS = (0.35, 0.25, 0.15, 0.08, 0.05, 0.12)
SEXES: tuple[str, ...] = ("FEMALE", "MALE")
LANGUAGES: tuple[str, ...] = ("CN", "EN", "ES", "AR", "JA", "KO", "FR", "DE", "PT", "RU", "TH")
LANGUAGE_WEIGHTS = (0.50, 0.20, 0.05, 0.04, 0.06, 0.03, 0.03, 0.03, 0.02, 0.02, 0.02)
TAGS: tuple[str, ...] = ("ECOMMERCE", "NEWS", "MARKETING", "LIVE", "EDUCATION", "CUSTOMER", "STORYTELLING")
TAG_WEIGHTS = (0.25, 0.12, 0.18, 0.15, 0.12, 0.10, 0.08)
CREATE_TYPES: tuple[str, ...] = ("PACKAGE", "SEGMENT")
CHARGE_MODES: tuple[str, ...] = ("PERIODIC", "ONE_TIME", "ON_DEMAND")

_VOICE_BASES = (
    "小美",
    "晓晨",
    "云希",
    "小雅主播",
    "客服小助手",
    "新闻男声",
    "温柔姐姐",
    "东北大叔",
    "Emma",
    "Liam",
    "Olivia",
    "Noah",
    "Grace Narrator",
    "Ava Support",
    "Sofía",
    "Mateo",
    "Lucía Ventas",
    "سارة",
    "عمر",
    "ليلى الأخبار",
    "さくら",
    "ハルト",
    "ゆい先生",
    "지민",
    "서준",
    "Amélie",
    "Lukas",
    "Ольга",
    "Ana Beatriz",
    "สมชาย",
    "🎙️ Studio",
    "Nova ✨",
    "Kiki 🐱",
    "🔥 Live Host",
)
_VOICE_SUFFIXES = ("", " v2", "-温柔", " (calm)", "_live", " 🎧", " 2026", "-新版")
VOICE_NAMES: tuple[str, ...] = tuple(base + suffix for suffix in _VOICE_SUFFIXES for base in _VOICE_BASES)

BATCH_NAMES: tuple[str, ...] = tuple(
    [f"batch-{year}{month:02d}-{wave}" for year in (2025, 2026) for month in range(1, 13) for wave in "ab"]
    + [
        "spring-campaign",
        "双十一主播",
        "news-desk-q3",
        "edu-course-voices",
        "cs-hotline-refresh",
        "حملة-رمضان",
    ]
)

FAILURES: tuple[tuple[str, str], ...] = (
    ("MSS.00000101", "Audio quality is too low for training."),
    ("MSS.00000101", "Background noise in the recordings exceeds the limit."),
    ("MSS.00000102", "The voice authorization could not be verified."),
    ("MSS.00000102", "The speaker in the authorization does not match the training audio."),
    ("MSS.00000103", "Training input files are missing or unreadable."),
    ("MSS.00000103", "训练音频文件格式不支持。"),
    ("MSS.00000104", "Model training did not converge."),
    ("MSS.00000104", "Internal error while training; please retry."),
    ("MSS.00000105", "Resource quota exhausted."),
    ("MSS.00000105", "The allocated resource has expired."),
)

# parameter -> (expected, low, high, unit, suggestion zh, suggestion en)
ASSESS_PARAMS: tuple[tuple[str, str, float, float, str, str, str], ...] = (
    (
        "speed",
        "3.5-5.5",
        2.5,
        6.5,
        "字/秒",
        "请放慢语速，保持平稳。",
        "Speak a little slower and keep a steady pace.",
    ),
    ("sound", ">=60", 40.0, 80.0, "dB", "请靠近麦克风录音。", "Record closer to the microphone."),
    ("snr", ">=30", 15.0, 45.0, "dB", "请在安静环境中录音。", "Record in a quiet room."),
    ("reverb", "<=0.4", 0.1, 0.9, "s", "请减少房间混响。", "Reduce room echo, e.g. with soft furnishings."),
    ("dnsmos_ovrl", ">=3.0", 2.0, 4.2, "", "整体音质偏低。", "Overall audio quality is low."),
    ("dnsmos_bak", ">=3.5", 2.5, 4.5, "", "背景噪声偏大。", "Background noise is noticeable."),
)
ASSESS_SUMMARY = (
    "录音质量良好。",
    "部分录音质量不达标，请参考各项建议重新录制。",
    "Audio quality is acceptable.",
)

EXTRA_TOP_LEVEL = ("voice_style", "quality_score", "region_hint")
