"""A small corpus for the ask pipeline, ingested through the real pipeline in each test's transaction."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from ingest.models import Document
from kb.accounts.models import AccessGroup
from kb.accounts.roles import Role
from tests.factories import AccessGroupFactory, UserFactory
from tests.search.conftest import ingest_file

TRAVEL = """# Travel policy

## Trains and flights
Employees travel by train for any journey under six hours. Flights need the approval of a director.
First class is allowed on trains only for journeys longer than three hours.

## Hotels
The hotel limit is 180 euros per night in Amsterdam and 150 euros per night in Rotterdam.
Book hotels through the travel desk so that the company rate applies.
"""

SECURITY = """# Security handbook

## Passwords
Passwords must be at least 14 characters long and are never shared with anyone, including IT staff.
A password manager is installed on every company laptop.

## VPN
Connect to the VPN before opening any internal system from outside the office.
"""

LEAVE = """# Parental leave

Every parent receives sixteen weeks of paid parental leave, to be taken within the first year.
Tell your manager at least two months before the leave starts.
"""


@dataclass
class Corpus:
    travel: Document
    security: Document
    leave: Document
    hr: AccessGroup


@pytest.fixture
def corpus(db) -> Corpus:
    hr = AccessGroupFactory(name="HR")
    return Corpus(
        travel=ingest_file(TRAVEL, "travel-policy.md"),
        security=ingest_file(SECURITY, "security-handbook.md"),
        leave=ingest_file(LEAVE, "parental-leave.md", groups=[hr]),
        hr=hr,
    )


@pytest.fixture
def hr_employee(corpus):
    user = UserFactory(roles=[Role.EMPLOYEE])
    user.access_groups.add(corpus.hr)
    return user
