from django.db import migrations


def create_runtimes(apps, schema_editor):
    from apps.packs.runtimes import BUILTIN_RUNTIMES

    Runtime = apps.get_model("packs", "Runtime")
    for spec in BUILTIN_RUNTIMES:
        Runtime.objects.update_or_create(name=spec["name"], defaults={k: v for k, v in spec.items() if k != "name"})


class Migration(migrations.Migration):
    dependencies = [("packs", "0001_initial")]
    operations = [migrations.RunPython(create_runtimes, migrations.RunPython.noop)]
