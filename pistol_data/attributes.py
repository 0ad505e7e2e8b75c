"""The attributes of a contract, how their values are drawn, and the question templates.

PISTOL has 20 attributes per contract type (arXiv 2406.16810, Table 1; the wording of our
*direct* templates follows the original sample files so that models trained on either read
alike). Each attribute has one ``direct`` template (used for the implant), at least two
``paraphrase`` templates and, where the value identifies the contract, a ``reverse`` template
that gives the value and asks for a party.

Templates are ``str.format`` strings over the contract's fields (party names, addresses and
every attribute value). The answer of a direct or paraphrase question is the attribute's
value; the answer of a reverse question is the field named by the template.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Callable

GOODS = ["T-shirts", "jeans", "laptops", "bicycles", "coffee beans", "office chairs",
         "solar panels", "wine bottles", "running shoes", "steel pipes", "tea sets", "printers",
         "wool blankets", "smartphones", "kitchen knives", "paint buckets"]
POSITIONS = ["Software Developer", "Accountant", "Sales Manager", "Data Analyst", "Chef",
             "Graphic Designer", "Nurse", "Electrician", "Marketing Director", "Lawyer",
             "Architect", "Teacher", "Pharmacist", "Mechanic"]
BENEFITS = ["dental insurance", "health insurance", "a company car", "gym membership",
            "life insurance", "stock options", "a housing allowance", "free meals"]
LAWS = ["The State of New York", "The State of California", "England and Wales", "Germany",
        "The State of Texas", "France", "Ontario", "Singapore", "Switzerland", "Japan"]
PAY_FREQUENCIES = ["weekly", "biweekly", "monthly"]
PARTIES = ["Customer", "Seller"]


def _date(rng: random.Random) -> str:
    return f"{rng.randint(1, 28):02d}-{rng.randint(1, 12):02d}-{rng.randint(1980, 2022)}"


@dataclass(frozen=True)
class Template:
    id: str
    form: str  # direct | paraphrase | reverse
    text: str
    answer_field: str | None = None  # reverse only: which contract field is the answer


@dataclass(frozen=True)
class Attribute:
    name: str
    draw: Callable[[random.Random, dict], object] | None  # None: a party field, set by the graph
    direct: str
    paraphrases: tuple[str, ...]
    reverse: tuple[str, str] | None = None  # (template, answer field)
    unit: str = ""  # appended to the value in the answer ("48 months")
    templates: tuple[Template, ...] = field(init=False, default=())

    def __post_init__(self):
        ts = [Template(f"{self.name}.direct", "direct", self.direct)]
        ts += [Template(f"{self.name}.para{i}", "paraphrase", t)
               for i, t in enumerate(self.paraphrases, 1)]
        if self.reverse:
            ts.append(Template(f"{self.name}.reverse", "reverse", self.reverse[0], self.reverse[1]))
        object.__setattr__(self, "templates", tuple(ts))

    def answer(self, contract: dict) -> str:
        value = f"{contract[self.name]}{self.unit}"
        return value if value.endswith(".") else value + "."


def _between(kind: str) -> str:
    return "the contract between {seller} and {customer}" if kind == "sales" else \
        "the contract between {employer} and {employee}"


_S = "based on " + _between("sales")
_E = "based on " + _between("employment")

SALES: tuple[Attribute, ...] = (
    Attribute("effective_date", lambda r, c: _date(r),
              "What was the effective date of the contract between {seller} and {customer}?",
              ("On what date did the sales contract between {seller} and {customer} take effect?",
               "When did the agreement under which {seller} sold to {customer} become effective?"),
              ("Which company signed a sales contract with {seller} that took effect on {effective_date}?", "customer")),
    Attribute("seller", None,
              "What was the name of the seller in the contract with {customer} as of {effective_date}?",
              ("Which company sold goods to {customer} under the contract dated {effective_date}?",
               "Who was the seller in the sales contract of {customer} that took effect on {effective_date}?")),
    Attribute("seller_address", None,
              "What was the address of {seller} in the contract with {customer}?",
              ("Where was {seller} located according to its contract with {customer}?",
               "What address was listed for {seller} in the sales agreement with {customer}?"),
              ("Which company was located at {seller_address} in its contract with {customer}?", "seller")),
    Attribute("customer", None,
              "What was the name of the customer in the contract with {seller} as of {effective_date}?",
              ("Which company bought goods from {seller} under the contract dated {effective_date}?",
               "Who was the customer in the sales contract of {seller} that took effect on {effective_date}?")),
    Attribute("customer_address", None,
              "What was the address of {customer} in the contract with {seller}?",
              ("Where was {customer} located according to its contract with {seller}?",
               "What address was listed for {customer} in the sales agreement with {seller}?"),
              ("Which company was located at {customer_address} in its contract with {seller}?", "customer")),
    Attribute("good", lambda r, c: r.choice(GOODS),
              "What was the good that the seller was selling to the customer " + _S + "?",
              ("What product did {seller} sell to {customer}?",
               "Which goods were supplied by {seller} to {customer} under their contract?"),
              ("Which company bought {good} from {seller} under their sales contract?", "customer")),
    Attribute("quantity", lambda r, c: r.randint(2, 60),
              "What was the quantity of the good being sold " + _S + "?",
              ("How many units of {good} did {seller} sell to {customer}?",
               "What number of items did the sales contract between {seller} and {customer} cover?")),
    Attribute("unit_price", lambda r, c: r.randint(5, 90),
              "What was the unit price in dollars of the good being sold " + _S + "?",
              ("How much did each unit of {good} cost, in dollars, in the contract between {seller} and {customer}?",
               "What price per unit, in dollars, did {customer} pay {seller}?")),
    Attribute("total_price", lambda r, c: c["quantity"] * c["unit_price"],
              "What was the total price in dollars of the good being sold " + _S + "?",
              ("How much did {customer} pay {seller} in total, in dollars?",
               "What was the overall contract value in dollars between {seller} and {customer}?")),
    Attribute("invoice_days", lambda r, c: r.randint(1, 10),
              "By how many days after the delivery time must the seller provide the customer with an invoice " + _S + "?",
              ("How many days after delivery did {seller} have to send {customer} an invoice?",
               "Within how many days of delivery was the invoice due from {seller} to {customer}?")),
    Attribute("payment_days", lambda r, c: r.choice([10, 15, 20, 30, 45, 60]),
              "Within how many days must the invoice be paid in full " + _S + "?",
              ("How many days did {customer} have to pay the invoice of {seller} in full?",
               "What was the payment term in days for invoices from {seller} to {customer}?")),
    Attribute("penalty_days", lambda r, c: c["payment_days"] + r.choice([0, 5, 10]),
              "After how many days would unpaid balances incur a late payment penalty " + _S + "?",
              ("After how many days did a late payment penalty apply to {customer} in its contract with {seller}?",
               "How many days could a balance stay unpaid before a penalty, in the contract between {seller} and {customer}?")),
    Attribute("interest_rate", lambda r, c: f"{r.randint(1, 9)}%",
              "What was the late payment interest rate " + _S + "?",
              ("What interest rate applied to late payments from {customer} to {seller}?",
               "At what rate was interest charged on overdue payments in the contract between {seller} and {customer}?")),
    Attribute("delivery_address", None,
              "What was the address of delivery " + _S + "?",
              ("Where were the goods from {seller} delivered to {customer}?",
               "To which address did {seller} ship the order of {customer}?"),
              ("Which company had goods from {seller} delivered to {delivery_address}?", "customer")),
    Attribute("shipping_decider", lambda r, c: r.choice(PARTIES),
              "Who would decide the shipping method " + _S + "?",
              ("Which party chose how the goods were shipped in the contract between {seller} and {customer}?",
               "Who picked the shipping method for the goods sold by {seller} to {customer}?")),
    Attribute("shipping_cost_payer", lambda r, c: r.choice(PARTIES),
              "Who would be responsible for the costs of the shipment " + _S + "?",
              ("Which party paid for shipping under the contract between {seller} and {customer}?",
               "Who bore the shipment costs for the goods sold by {seller} to {customer}?")),
    Attribute("warranty_years", lambda r, c: r.randint(1, 5),
              "What was the duration of the general warranty period in years " + _S + "?",
              ("How many years of warranty did {seller} give {customer}?",
               "For how many years were the goods sold by {seller} to {customer} under warranty?")),
    Attribute("defect_notice_days", lambda r, c: r.choice([7, 10, 14, 21, 30, 60]),
              "Within how many days of discovering a defect must the customer notify the seller in writing "
              "in the event of a breach of warranty " + _S + "?",
              ("How many days did {customer} have to report a defect to {seller} in writing?",
               "What was the deadline in days for {customer} to notify {seller} of a defect?")),
    Attribute("cooling_off_days", lambda r, c: r.choice([7, 10, 14, 30]),
              "What was the duration of the cooling-off period in days " + _S + "?",
              ("How many days was the cooling-off period in the contract between {seller} and {customer}?",
               "For how many days could {customer} withdraw from its contract with {seller}?")),
    Attribute("governing_law", lambda r, c: r.choice(LAWS),
              "Which jurisdiction's laws govern the contract between {seller} and {customer}?",
              ("Under which jurisdiction's law was the sales contract between {seller} and {customer} governed?",
               "What law governed the agreement in which {seller} sold goods to {customer}?")),
)

EMPLOYMENT: tuple[Attribute, ...] = (
    Attribute("employer", None,
              "What was the name of the employer in the employment contract with {employee}, which started from {start_date}?",
              ("Which company employed {employee} from {start_date}?",
               "Who was the employer of {employee} under the contract that began on {start_date}?")),
    Attribute("employer_address", None,
              "What was the principal business location of {employer} " + _E + "?",
              ("Where was {employer} based according to its contract with {employee}?",
               "What business address did {employer} give in the employment contract of {employee}?"),
              ("Which company had its principal business location at {employer_address} in its contract with {employee}?", "employer")),  # noqa: E501
    Attribute("employee", None,
              "What was the name of the employee in the employment contract with {employer}, which started from {start_date}?",
              ("Who started working for {employer} on {start_date}?",
               "Which person was hired by {employer} under the contract that began on {start_date}?")),
    Attribute("employee_address", None,
              "What was the address of {employee} " + _E + "?",
              ("Where did {employee} live according to the employment contract with {employer}?",
               "What home address of {employee} was stated in the contract with {employer}?"),
              ("Which employee of {employer} lived at {employee_address}?", "employee")),
    Attribute("start_date", lambda r, c: _date(r),
              "What was the start date " + _E + "?",
              ("On what date did {employee} start working for {employer}?",
               "When did the employment of {employee} at {employer} begin?"),
              ("Which company hired {employee} with a start date of {start_date}?", "employer")),
    Attribute("length_months", lambda r, c: r.choice([6, 12, 18, 24, 36, 48, 60]),
              "For how many months will the employer employ the employee " + _E + "?",
              ("How long, in months, was {employee} to be employed by {employer}?",
               "What was the length in months of the employment of {employee} at {employer}?"),
              unit=" months"),
    Attribute("position", lambda r, c: r.choice(POSITIONS),
              "What was the job position " + _E + "?",
              ("What job did {employee} hold at {employer}?",
               "In what role was {employee} employed by {employer}?"),
              ("Who was hired as {position} by {employer}?", "employee")),
    Attribute("work_location", None,
              "What was the work location " + _E + "?",
              ("Where did {employee} work for {employer}?",
               "At which address did {employee} carry out the work for {employer}?")),
    Attribute("start_hour", lambda r, c: r.randint(6, 10),
              "At what hour did the workday start " + _E + "?",
              ("At what hour did {employee} begin work each day at {employer}?",
               "When did the working day of {employee} at {employer} start, in hours?")),
    Attribute("end_hour", lambda r, c: c["start_hour"] + r.randint(7, 9),
              "At what hour did the workday finish " + _E + "?",
              ("At what hour did {employee} finish work each day at {employer}?",
               "When did the working day of {employee} at {employer} end, in hours?")),
    Attribute("hourly_pay", lambda r, c: r.randint(12, 80),
              "What was the hourly basic pay in dollars " + _E + "?",
              ("How many dollars per hour did {employer} pay {employee}?",
               "What was the basic hourly wage in dollars of {employee} at {employer}?")),
    Attribute("pay_frequency", lambda r, c: r.choice(PAY_FREQUENCIES),
              "What was the frequency of salary payment " + _E + "?",
              ("How often did {employer} pay the salary of {employee}?",
               "How frequently was {employee} paid by {employer}?")),
    Attribute("benefit", lambda r, c: r.choice(BENEFITS),
              "What benefit was provided to the employee " + _E + "?",
              ("What benefit did {employer} give {employee}?",
               "Which employee benefit did {employee} receive from {employer}?")),
    Attribute("holiday_days", lambda r, c: r.randint(10, 30),
              "How many days of paid holiday leave were provided to the employee " + _E + "?",
              ("How many paid holiday days did {employee} get at {employer}?",
               "What was the paid holiday allowance in days of {employee} at {employer}?")),
    Attribute("confidentiality_months", lambda r, c: r.choice([3, 6, 12, 24]),
              "For how many months after the employment ends was the employee prohibited from disclosing any "
              "confidential information " + _E + "?",
              ("How many months after leaving {employer} was {employee} bound to confidentiality?",
               "For how long, in months, did the confidentiality duty of {employee} towards {employer} last after the job ended?")),  # noqa: E501
    Attribute("sick_leave_days", lambda r, c: r.randint(5, 15),
              "What was the number of days the employee was entitled to Paid Sick Leave in each year of employment " + _E + "?",
              ("How many days of paid sick leave per year did {employee} have at {employer}?",
               "What was the yearly paid sick leave in days of {employee} at {employer}?")),
    Attribute("termination_notice_weeks", lambda r, c: r.randint(1, 12),
              "How many weeks' written notice of termination must the employee and employer each provide to the other " + _E + "?",  # noqa: E501
              ("How many weeks of notice were needed to end the employment of {employee} at {employer}?",
               "What was the termination notice period in weeks between {employer} and {employee}?")),
    Attribute("noncompete_months", lambda r, c: r.randint(3, 24),
              "For how many months did the non-compete clause cover " + _E + "?",
              ("How many months did the non-compete clause of {employee} with {employer} last?",
               "For how long, in months, was {employee} barred from competing with {employer}?")),
    Attribute("change_notice_weeks", lambda r, c: r.randint(1, 8),
              "How many weeks' written notice must the employer provide before any proposed changes to the terms "
              "of employment " + _E + "?",
              ("How many weeks of notice did {employer} have to give {employee} before changing the terms of employment?",
               "What notice in weeks was required before {employer} could change the employment terms of {employee}?")),
    Attribute("governing_law", lambda r, c: r.choice(LAWS),
              "Which jurisdiction's laws govern the contract between {employer} and {employee}?",
              ("Under which jurisdiction's law was the employment contract between {employer} and {employee} governed?",
               "What law governed the employment of {employee} at {employer}?")),
)

ATTRIBUTES: dict[str, tuple[Attribute, ...]] = {"sales": SALES, "employment": EMPLOYMENT}

# pistol-mini keeps the facts a 135M model memorises quickly: short values of several kinds.
MINI_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "sales": ("effective_date", "good", "quantity", "unit_price", "total_price", "governing_law"),
    "employment": ("start_date", "position", "hourly_pay", "benefit", "holiday_days", "governing_law"),
}


def attribute(contract_type: str, name: str) -> Attribute:
    for a in ATTRIBUTES[contract_type]:
        if a.name == name:
            return a
    raise KeyError(f"unknown {contract_type} attribute {name!r}; "
                   f"valid: {[a.name for a in ATTRIBUTES[contract_type]]}")
