"""The sandbox world's vocabulary: its issues, tones and products, how customers phrase a prompt, and the clauses
answers are made of (good ones, bad ones, each issue's actions, the ideal answer's). `world` builds prompts and
answers from these tables; `gold` scores answers by them."""

from __future__ import annotations

ISSUES: tuple[str, ...] = (
    "late_delivery",
    "damaged_item",
    "wrong_item",
    "refund_request",
    "cancel_order",
    "change_address",
    "login_trouble",
    "double_charge",
)
TONES: tuple[str, ...] = ("neutral", "polite", "angry")
TONE_WEIGHTS: tuple[float, ...] = (0.4, 0.3, 0.3)
PRODUCTS: tuple[str, ...] = (
    "wireless headphones",
    "coffee maker",
    "hiking backpack",
    "desk lamp",
    "running shoes",
    "phone case",
    "yoga mat",
    "smart watch",
    "blender",
    "winter jacket",
    "board game",
    "electric kettle",
)
SPLITS: tuple[str, ...] = ("train", "test")
ORDER_NUMBERS = (10000, 99999)
"""Inclusive range of the five-digit order numbers."""
TEST_ORDER_MODULUS = 7
"""Test prompts use the order numbers divisible by 7, train prompts all others: the splits never share
a prompt, and digits look alike in both (so a model that copies order numbers generalises)."""

PROMPT_PHRASINGS: dict[str, tuple[str, ...]] = {
    "late_delivery": (
        "My order {order} hasn't arrived. What should I do?",
        "I ordered a {product} (order {order}) and it still hasn't been delivered.",
        "Where is my {product}? Order {order} was supposed to arrive last week.",
    ),
    "damaged_item": (
        "My {product} from order {order} arrived damaged.",
        "The {product} in order {order} came broken. What can I do?",
        "Order {order} arrived but the {product} is cracked.",
    ),
    "wrong_item": (
        "I received the wrong item in order {order}. I ordered a {product}.",
        "Order {order} came with something else instead of my {product}.",
        "You sent me the wrong product for order {order}.",
    ),
    "refund_request": (
        "I'd like a refund for the {product} in order {order}.",
        "How do I get my money back for order {order}? The {product} isn't what I expected.",
        "Can I get a refund for order {order}?",
    ),
    "cancel_order": (
        "Please cancel order {order}. I don't need the {product} anymore.",
        "Can I still cancel order {order}?",
        "I want to cancel my {product} order, number {order}.",
    ),
    "change_address": (
        "I need to change the shipping address for order {order}.",
        "I just moved. Can you send order {order} to my new address?",
        "The address on order {order} is wrong, and the {product} will go to my old place.",
    ),
    "login_trouble": (
        "I can't log in to my account to check order {order}.",
        "My password doesn't work and I need to see order {order}.",
        "I'm locked out of my account and can't track my {product}, order {order}.",
    ),
    "double_charge": (
        "I was charged twice for order {order}.",
        "My card shows two payments for the {product} in order {order}.",
        "You billed me twice for my {product}. The order is {order}.",
    ),
}

TONE_WRAPPERS: dict[str, tuple[tuple[str, str], ...]] = {
    "neutral": (("", ""),),
    "polite": (
        ("Hello!", "Thank you so much for your help."),
        ("Hi, sorry to bother you.", "Thanks in advance!"),
        ("Good morning.", "I appreciate your help."),
    ),
    "angry": (
        ("This is unacceptable!", "Fix this now."),
        ("Seriously?", "This is the worst service I've ever had."),
        ("I'm really fed up.", "Sort it out today!"),
    ),
}
"""(prefix, suffix) sentences around the issue phrasing, per tone."""

CLAUSES: dict[str, tuple[str, ...]] = {
    "greeting": (
        "Hi there!",
        "Hello, and thanks for reaching out.",
        "Hi, thanks for contacting us.",
        "Hello!",
        "Thanks for getting in touch.",
    ),
    "empathy": (
        "I'm sorry to hear that.",
        "I'm really sorry about the trouble with your {product}.",
        "I understand how frustrating this must be.",
        "I apologize for the inconvenience.",
        "I completely understand why you're upset, and I'm sorry.",
    ),
    "lookup": (
        "I've pulled up order {order}.",
        "I'm looking at order {order} now.",
        "I found order {order} in our system.",
    ),
    "offer": (
        "Let me know if there's anything else I can do.",
        "Is there anything else I can help you with?",
        "Feel free to reply if you need more help.",
        "I'm happy to help with anything else.",
    ),
    "closing": (
        "Have a great day!",
        "Best regards, the Support Team.",
        "Thanks for your patience.",
        "Take care!",
    ),
    "rude": (
        "That's not my problem.",
        "You should have read the instructions.",
        "Please stop complaining.",
        "Figure it out yourself.",
        "Don't waste our time with this.",
        "We get messages like this all day.",
    ),
    "padding": (
        "We truly value each and every one of our customers and their overall experience.",
        "Customer satisfaction has always been and will always remain our highest priority here.",
        "Our dedicated team is constantly working very hard to serve you better every single day.",
        "Please know that your message is extremely important to us and to our whole company.",
        "We are committed to providing the best possible service in every situation, now and always.",
        "As a company, we always strive to exceed expectations in everything that we do.",
    ),
}
"""Issue-independent clause templates per category; ``{product}`` and ``{order}`` are slots."""

ACTIONS: dict[str, tuple[str, ...]] = {
    "late_delivery": (
        "Check your tracking number.",
        "Please check the tracking link in your confirmation email.",
        "I've checked order {order}: it is on its way and should arrive within 3 days.",
        "Order {order} is in transit, and you can follow it with your tracking number.",
    ),
    "damaged_item": (
        "Send us a photo of the damage.",
        "Please send a photo of the damaged {product} and we will ship a replacement.",
        "I've arranged a free replacement for order {order}.",
        "We will ship a new one for order {order} as soon as you send a photo of the damage.",
    ),
    "wrong_item": (
        "Return the wrong item with the prepaid label.",
        "Please use the prepaid label to send back the item you received.",
        "I've sent a prepaid return label for order {order}, and the correct item ships today.",
        "We will send the right {product} for order {order} once the wrong item is on its way back.",
    ),
    "refund_request": (
        "Return the item for a full refund.",
        "You can request a refund from the Orders page.",
        "I've started a refund for order {order}, and it will reach your card within 5 business days.",
        "Once we receive the return for order {order}, we will refund you in full.",
    ),
    "cancel_order": (
        "Cancel it from the Orders page.",
        "You can cancel the order from your account before it ships.",
        "I've cancelled order {order}, and you won't be charged.",
        "Order {order} is now cancelled, and the payment has been released.",
    ),
    "change_address": (
        "Update the address in your account settings.",
        "Reply with your new address and we will update it.",
        "I've updated the shipping address for order {order}.",
        "Order {order} will now go to your new address.",
    ),
    "login_trouble": (
        "Reset your password with the Forgot password link.",
        "Try resetting your password from the login page.",
        "I've sent a password reset link to your email so you can see order {order}.",
        "I've unlocked your account, and you can now log in and view order {order}.",
    ),
    "double_charge": (
        "The second charge is a temporary hold and will disappear.",
        "The duplicate charge will be refunded automatically.",
        "I've refunded the duplicate charge on order {order}.",
        "The second payment for order {order} was a mistake, and I've reversed it.",
    ),
}
"""The action that resolves each issue, several paraphrases each; the ones with ``{order}`` name it."""

IDEAL_CLAUSES: dict[str, str] = {
    "greeting": "Hi, thanks for contacting us.",
    "empathy": "I'm really sorry about the trouble with your {product}.",
    "empathy_no_product": "I understand how frustrating this must be.",
    "offer": "Is there anything else I can help you with?",
    "closing": "Have a great day!",
}
"""The clauses ``ideal_response`` uses around the first order-naming action of the issue."""
