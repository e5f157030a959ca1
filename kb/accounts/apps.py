from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "kb.accounts"
    label = "accounts"
    verbose_name = "Accounts and roles"
