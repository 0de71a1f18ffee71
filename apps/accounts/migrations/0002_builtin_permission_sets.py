from django.db import migrations


def create_sets(apps, schema_editor):
    from apps.accounts.builtin import BUILTIN_SETS

    PermissionSet = apps.get_model("accounts", "PermissionSet")
    for name, spec in BUILTIN_SETS.items():
        PermissionSet.objects.update_or_create(
            name=name, defaults={"description": spec["description"], "grants": spec["grants"], "builtin": True}
        )


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(create_sets, migrations.RunPython.noop)]
