from celery import shared_task

from kb.llm import cache
from kb.search.models import IndexState


@shared_task(name="llm.cache_prune")
def cache_prune() -> int:
    state = IndexState.objects.filter(pk=1).first()
    return cache.prune(current_index_version=state.version if state else 0)
