import factory
from django.contrib.auth import get_user_model

from kb.accounts.models import AccessGroup
from kb.accounts.roles import Role
from kb.accounts.services import user_role_add

PASSWORD = "correct horse battery staple"


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    email = factory.LazyAttribute(lambda u: f"{u.username}@example.com")
    password = factory.PostGenerationMethodCall("set_password", PASSWORD)

    @factory.post_generation
    def roles(self, create, extracted, **kwargs):
        for role in extracted or []:
            user_role_add(user=self, role=Role(role))
        if create:
            self.save()


class AccessGroupFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = AccessGroup
        django_get_or_create = ("name",)

    name = factory.Sequence(lambda n: f"group{n}")
