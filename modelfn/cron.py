"""A schedule written once, as five-field unix cron (`minute hour day-of-month month day-of-week`),
and spelt for each scheduler: Cloud Scheduler takes it as it is; EventBridge wants six fields,
`?` in one of the two day fields and Sunday as 1 rather than 0."""

from __future__ import annotations

import re

FIELD = re.compile(r"[0-9A-Za-z*?/,\-]+")
DAY_NAMES = ("SUN", "MON", "TUE", "WED", "THU", "FRI", "SAT")


def problems(expression: str) -> list[str]:
    """Why `expression` is not a cron both schedulers accept; empty when it is."""
    fields = expression.split()
    if len(fields) != 5 or not all(FIELD.fullmatch(f) for f in fields):
        return [f"{expression!r} is not five cron fields (minute hour day-of-month month day-of-week): '0 2 * * *'"]
    if "?" in expression:
        return [f"{expression!r}: write '*' rather than '?' (unix cron); EventBridge's '?' is added where it needs one"]
    day_of_month, day_of_week = fields[2], fields[4]
    if day_of_month != "*" and day_of_week != "*":
        return [f"{expression!r}: EventBridge cannot restrict both the day of the month and the day of the week"]
    return []


def eventbridge(expression: str) -> str:
    """`0 2 * * 1-5` -> `cron(0 2 ? * 2-6 *)`: EventBridge Scheduler's form of the same times."""
    minute, hour, day_of_month, month, day_of_week = expression.split()
    if day_of_week == "*":
        day_of_week = "?"
    else:
        day_of_month = "?"
        day_of_week = ",".join(_aws_days(part) for part in day_of_week.split(","))
    return f"cron({minute} {hour} {day_of_month} {month} {day_of_week} *)"


def _aws_days(part: str) -> str:
    """Unix days are 0-7 with Sunday as 0 and 7; EventBridge's are 1-7 with Sunday as 1. A step stays a step."""
    days, slash, step = part.partition("/")
    shifted = re.sub(r"\d+", lambda m: str(int(m.group()) % 7 + 1), days)
    return shifted + slash + step
