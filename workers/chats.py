"""Inbox tasks: deliver a conversation's pending messages, sweep the outbox, reconcile gaps."""

from __future__ import annotations

import logging

from celery import shared_task

logger = logging.getLogger(__name__)


@shared_task(name="chats.deliver", bind=True, max_retries=None)
def deliver(self, conversation_id: int) -> str:
    """Send what is pending in order; come back when the next try is due."""
    from crm_app.services.chats.deliver import deliver as run

    wait = run(int(conversation_id))
    if wait is None:
        return "done"
    if self.request.is_eager:
        return "waiting"  # the beat's sweep sends it when due (no blocking retries inline)
    try:
        raise self.retry(countdown=wait)
    except Exception as exc:
        from celery.exceptions import Retry

        if isinstance(exc, Retry):
            raise
        logger.warning(
            "chat %s: retry not queued (%s); the sweep will send it",
            conversation_id,
            type(exc).__name__,
        )
        return "waiting"


@shared_task(name="chats.sweep")
def sweep() -> int:
    """Enqueue every conversation with something due (a lost kick, a broker outage)."""
    from crm_app.services.chats.deliver import due_conversations
    from crm_app.services.chats.messages import kick

    due = due_conversations()
    for conversation_id in due:
        kick(conversation_id)
    return len(due)


@shared_task(name="chats.reconcile")
def reconcile() -> int:
    """Pick up managers' messages whose channel hook never arrived (amojo sends it once)."""
    from crm_app.services.chats.reconcile import reconcile_recent

    return reconcile_recent()
