from django import forms

from kb.accounts.models import AccessGroup


class MultipleFileInput(forms.ClearableFileInput):
    allow_multiple_selected = True


class UploadForm(forms.Form):
    # Named like the form's own `files` attribute on purpose: the field's input is called "files". The
    # view reads the uploads from request.FILES.getlist("files"), since a file field keeps only the last.
    files = forms.FileField(  # type: ignore[assignment]
        widget=MultipleFileInput(attrs={"multiple": True}),
        help_text=(
            "PDF, Word (.docx), PowerPoint (.pptx), Excel (.xlsx), CSV, e-mail (.eml), HTML, Markdown or plain text; "
            "several at once are fine."
        ),
    )
    access_groups = forms.ModelMultipleChoiceField(
        queryset=AccessGroup.objects.all(),
        required=False,
        help_text="Who may read these documents. None selected: every employee.",
    )


class ReplaceForm(forms.Form):
    file = forms.FileField(help_text="The new version. It replaces the current one once it is ready.")


class AccessForm(forms.Form):
    access_groups = forms.ModelMultipleChoiceField(
        queryset=AccessGroup.objects.all(),
        required=False,
        widget=forms.CheckboxSelectMultiple,
        help_text="None selected: every employee may read this document.",
    )
