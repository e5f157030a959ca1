from django.db import migrations, models


class Migration(migrations.Migration):
    """Blocks in the narrower encoding (`kb.search.packing`): the old blocks are dropped and a database with
    postings is marked pending, so searches score its rows until the next full pack (beat runs it within a
    minute; `manage.py reindex --postings` at once)."""

    dependencies = [
        ("search", "0003_posting_blocks"),
    ]

    operations = [
        migrations.RunSQL("DELETE FROM search_postingblock", reverse_sql=migrations.RunSQL.noop),
        migrations.RemoveField(model_name="postingblock", name="tfs"),
        migrations.RemoveField(model_name="postingblock", name="lens"),
        migrations.RenameField(model_name="postingblock", old_name="ids", new_name="gaps"),
        migrations.AddField(
            model_name="postingblock",
            name="base",
            field=models.BigIntegerField(help_text="The block's first chunk id"),
            preserve_default=False,
        ),
        migrations.AddField(
            model_name="postingblock", name="codes", field=models.BinaryField(default=b""), preserve_default=False
        ),
        migrations.AddField(model_name="postingblock", name="escapes", field=models.BinaryField(null=True)),
        migrations.AddField(model_name="postingblock", name="wide_tfs", field=models.BinaryField(null=True)),
        migrations.AddField(model_name="postingblock", name="wide_lens", field=models.BinaryField(null=True)),
        migrations.RunSQL(
            [
                "ALTER TABLE search_postingblock ALTER COLUMN codes SET STORAGE EXTERNAL, "
                "ALTER COLUMN escapes SET STORAGE EXTERNAL, ALTER COLUMN wide_tfs SET STORAGE EXTERNAL, "
                "ALTER COLUMN wide_lens SET STORAGE EXTERNAL",
                "INSERT INTO search_packpending (id, since) SELECT 1, now() WHERE EXISTS (SELECT FROM search_posting) "
                "ON CONFLICT (id) DO NOTHING",
            ],
            reverse_sql=migrations.RunSQL.noop,
        ),
    ]
