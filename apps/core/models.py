"""Base models shared by every Attune app."""
from __future__ import annotations

from django.db import models

from .refs import make_ref, validate_name


class TimestampedModel(models.Model):
    created = models.DateTimeField(auto_now_add=True, db_index=True)
    updated = models.DateTimeField(auto_now=True)

    class Meta:
        abstract = True


class Source(models.TextChoices):
    PACK = "pack", "pack file"
    API = "api", "API"


class PackComponent(TimestampedModel):
    """A row that belongs to a pack and is addressed by ``<pack>.<name>``.

    ``ref`` is stored (and unique) so lookups and filters by ref hit an index. ``source`` tells whether
    the row came from a pack file (re-registration may prune it) or from the API (kept).
    """

    pack = models.ForeignKey("packs.Pack", on_delete=models.CASCADE, related_name="%(class)ss")
    name = models.CharField(max_length=128, validators=[validate_name])
    ref = models.CharField(max_length=256, unique=True, editable=False)
    description = models.TextField(blank=True, default="")
    source = models.CharField(max_length=8, choices=Source.choices, default=Source.API)
    file_path = models.CharField(max_length=1024, blank=True, default="", help_text="Pack file it came from.")

    class Meta:
        abstract = True
        ordering = ["ref"]

    def save(self, *args, **kwargs):
        self.ref = make_ref(self.pack.ref, self.name)
        super().save(*args, **kwargs)

    def __str__(self) -> str:
        return self.ref
