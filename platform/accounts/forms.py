"""Forms check the shape of input; the rules about accounts live in services."""

from __future__ import annotations

from typing import Any

from django import forms
from django.contrib.auth import password_validation
from django.contrib.auth.forms import AuthenticationForm, BaseUserCreationForm, UserChangeForm

from accounts.models import Role, User


class SignUpForm(forms.Form):
    email = forms.EmailField(label="E-mail", widget=forms.EmailInput(attrs={"autocomplete": "email"}))
    display_name = forms.CharField(
        label="Display name", max_length=80, help_text="How other people on the portal see you."
    )
    role = forms.ChoiceField(
        label="I want to",
        choices=[
            (Role.VOLUNTEER, "Volunteer: lend my computer to research projects"),
            (Role.RESEARCHER, "Research: create and run training projects"),
        ],
        initial=Role.VOLUNTEER,
        widget=forms.RadioSelect,
    )
    password = forms.CharField(
        label="Password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
        help_text=password_validation.password_validators_help_text_html(),
    )
    password_confirm = forms.CharField(
        label="Password (again)",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "new-password"}),
    )

    def clean(self) -> dict[str, Any] | None:
        """Every password rule is checked here, with the other fields, so one submit shows every error."""
        cleaned = super().clean()
        if cleaned is None or not cleaned.get("password"):
            return cleaned
        password = cleaned["password"]
        # An unsaved user lets the similarity rule compare the password with the e-mail and name.
        candidate = User(email=cleaned.get("email", ""), display_name=cleaned.get("display_name", ""))
        try:
            password_validation.validate_password(password, user=candidate)
        except forms.ValidationError as exc:
            self.add_error("password", exc.messages)
        if password != cleaned.get("password_confirm"):
            self.add_error("password_confirm", "The two passwords differ.")
        return cleaned


class LoginForm(AuthenticationForm):
    error_messages = {
        **AuthenticationForm.error_messages,
        "invalid_login": "That e-mail and password do not match an account. Both are case-sensitive "
        "except the e-mail.",
    }


class ProfileForm(forms.ModelForm):
    class Meta:
        model = User
        fields = ["display_name"]


class AdminUserCreationForm(BaseUserCreationForm):
    class Meta:
        model = User
        fields = ("email", "display_name", "role")


class AdminUserChangeForm(UserChangeForm):
    class Meta:
        model = User
        fields = "__all__"
        field_classes: dict = {}
