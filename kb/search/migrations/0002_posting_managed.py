import django.db.models.deletion
from django.db import migrations, models


class Migration(migrations.Migration):
    """Marks the hand-made postings table as managed in Django's state only, so that the test flush
    empties it together with the chunks. The table itself does not change."""

    dependencies = [
        ("ingest", "0002_document_auto_title"),
        ("search", "0001_initial"),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[
                migrations.AlterModelOptions(name="posting", options={}),
                migrations.AlterModelTable(name="posting", table="search_posting"),
                migrations.AddField(
                    model_name="posting",
                    name="term",
                    field=models.ForeignKey(
                        db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, to="search.term"
                    ),
                    preserve_default=False,
                ),
                migrations.AddField(
                    model_name="posting",
                    name="chunk",
                    field=models.ForeignKey(
                        db_constraint=False, on_delete=django.db.models.deletion.DO_NOTHING, to="ingest.chunk"
                    ),
                    preserve_default=False,
                ),
            ],
            database_operations=[],
        )
    ]
