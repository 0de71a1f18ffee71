from django.db import migrations


def create_runtimes(apps, schema_editor):
    from apps.packs.runtimes import sync_builtin_runtimes

    sync_builtin_runtimes(apps.get_model("packs", "Runtime"))


class Migration(migrations.Migration):
    dependencies = [("packs", "0001_initial")]
    operations = [migrations.RunPython(create_runtimes, migrations.RunPython.noop)]
