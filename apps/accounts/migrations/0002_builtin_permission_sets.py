from django.db import migrations


def create_sets(apps, schema_editor):
    from apps.accounts.services import sync_builtin_sets

    sync_builtin_sets(apps.get_model("accounts", "PermissionSet"))


class Migration(migrations.Migration):
    dependencies = [("accounts", "0001_initial")]
    operations = [migrations.RunPython(create_sets, migrations.RunPython.noop)]
