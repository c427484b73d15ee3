from django.db import migrations

from config.db import pattern_index_dropper


class Migration(migrations.Migration):
    """Every publish() writes each index of webhooks_event: three of its eight were the LIKE copies of
    the id, type and tenant columns, which no query uses (issue 6)."""

    dependencies = [("webhooks", "0001_initial")]

    operations = [migrations.RunPython(pattern_index_dropper("webhooks_event"), migrations.RunPython.noop)]
