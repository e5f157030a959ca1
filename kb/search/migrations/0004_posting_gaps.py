from django.db import migrations, models


class Migration(migrations.Migration):
    """Blocks in the narrower encoding (`kb.search.packing`): the old blocks are dropped and a database with
    postings is marked pending, so searches score its rows until the next full pack (beat runs it within a
    minute; `manage.py reindex --postings` at once)."""

    dependencies = [
        ("search", "0003_posting_blocks"),
    ]

    operations = [
        # TRUNCATE frees the old blocks' space at once (1.8 GB at a million passages); transactional here too.
        migrations.RunSQL("TRUNCATE search_postingblock", reverse_sql="TRUNCATE search_postingblock"),
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
            # Back to 0003's blocks: none (0003's NOT NULL columns come back on an empty table), rows scored
            # until a full pack.
            reverse_sql=[
                "TRUNCATE search_postingblock",
                "INSERT INTO search_packpending (id, since) SELECT 1, now() WHERE EXISTS (SELECT FROM search_posting) "
                "ON CONFLICT (id) DO NOTHING",
            ],
        ),
    ]
