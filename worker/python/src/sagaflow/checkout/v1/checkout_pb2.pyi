from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class CheckoutStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    CHECKOUT_STATUS_UNSPECIFIED: _ClassVar[CheckoutStatus]
    CHECKOUT_STATUS_PENDING: _ClassVar[CheckoutStatus]
    CHECKOUT_STATUS_RESERVED: _ClassVar[CheckoutStatus]
    CHECKOUT_STATUS_PAID: _ClassVar[CheckoutStatus]
    CHECKOUT_STATUS_ORDERED: _ClassVar[CheckoutStatus]
    CHECKOUT_STATUS_SHIPPED: _ClassVar[CheckoutStatus]
    CHECKOUT_STATUS_CANCELLED: _ClassVar[CheckoutStatus]
    CHECKOUT_STATUS_REFUNDED: _ClassVar[CheckoutStatus]
    CHECKOUT_STATUS_PARTIALLY_REFUNDED: _ClassVar[CheckoutStatus]
CHECKOUT_STATUS_UNSPECIFIED: CheckoutStatus
CHECKOUT_STATUS_PENDING: CheckoutStatus
CHECKOUT_STATUS_RESERVED: CheckoutStatus
CHECKOUT_STATUS_PAID: CheckoutStatus
CHECKOUT_STATUS_ORDERED: CheckoutStatus
CHECKOUT_STATUS_SHIPPED: CheckoutStatus
CHECKOUT_STATUS_CANCELLED: CheckoutStatus
CHECKOUT_STATUS_REFUNDED: CheckoutStatus
CHECKOUT_STATUS_PARTIALLY_REFUNDED: CheckoutStatus

class Item(_message.Message):
    __slots__ = ("sku", "quantity")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ...) -> None: ...

class StartCheckoutRequest(_message.Message):
    __slots__ = ("client_request_id", "customer_id", "items", "coupon_code", "payment_method", "shipping_address")
    CLIENT_REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    CUSTOMER_ID_FIELD_NUMBER: _ClassVar[int]
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    COUPON_CODE_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_METHOD_FIELD_NUMBER: _ClassVar[int]
    SHIPPING_ADDRESS_FIELD_NUMBER: _ClassVar[int]
    client_request_id: str
    customer_id: str
    items: _containers.RepeatedCompositeFieldContainer[Item]
    coupon_code: str
    payment_method: str
    shipping_address: str
    def __init__(self, client_request_id: _Optional[str] = ..., customer_id: _Optional[str] = ..., items: _Optional[_Iterable[_Union[Item, _Mapping]]] = ..., coupon_code: _Optional[str] = ..., payment_method: _Optional[str] = ..., shipping_address: _Optional[str] = ...) -> None: ...

class StartCheckoutResponse(_message.Message):
    __slots__ = ("checkout_id", "status", "already_started")
    CHECKOUT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STARTED_FIELD_NUMBER: _ClassVar[int]
    checkout_id: str
    status: CheckoutStatus
    already_started: bool
    def __init__(self, checkout_id: _Optional[str] = ..., status: _Optional[_Union[CheckoutStatus, str]] = ..., already_started: _Optional[bool] = ...) -> None: ...

class GetCheckoutRequest(_message.Message):
    __slots__ = ("checkout_id",)
    CHECKOUT_ID_FIELD_NUMBER: _ClassVar[int]
    checkout_id: str
    def __init__(self, checkout_id: _Optional[str] = ...) -> None: ...

class Line(_message.Message):
    __slots__ = ("sku", "quantity", "unit_price_cents", "line_total_cents")
    SKU_FIELD_NUMBER: _ClassVar[int]
    QUANTITY_FIELD_NUMBER: _ClassVar[int]
    UNIT_PRICE_CENTS_FIELD_NUMBER: _ClassVar[int]
    LINE_TOTAL_CENTS_FIELD_NUMBER: _ClassVar[int]
    sku: str
    quantity: int
    unit_price_cents: int
    line_total_cents: int
    def __init__(self, sku: _Optional[str] = ..., quantity: _Optional[int] = ..., unit_price_cents: _Optional[int] = ..., line_total_cents: _Optional[int] = ...) -> None: ...

class Checkout(_message.Message):
    __slots__ = ("checkout_id", "status", "order_id", "total_cents", "lines", "payment_intent_id", "reservation_id", "shipment_status", "refunded_cents", "workflow_status", "stuck_reason", "stuck_message")
    CHECKOUT_ID_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    ORDER_ID_FIELD_NUMBER: _ClassVar[int]
    TOTAL_CENTS_FIELD_NUMBER: _ClassVar[int]
    LINES_FIELD_NUMBER: _ClassVar[int]
    PAYMENT_INTENT_ID_FIELD_NUMBER: _ClassVar[int]
    RESERVATION_ID_FIELD_NUMBER: _ClassVar[int]
    SHIPMENT_STATUS_FIELD_NUMBER: _ClassVar[int]
    REFUNDED_CENTS_FIELD_NUMBER: _ClassVar[int]
    WORKFLOW_STATUS_FIELD_NUMBER: _ClassVar[int]
    STUCK_REASON_FIELD_NUMBER: _ClassVar[int]
    STUCK_MESSAGE_FIELD_NUMBER: _ClassVar[int]
    checkout_id: str
    status: CheckoutStatus
    order_id: str
    total_cents: int
    lines: _containers.RepeatedCompositeFieldContainer[Line]
    payment_intent_id: str
    reservation_id: str
    shipment_status: str
    refunded_cents: int
    workflow_status: str
    stuck_reason: str
    stuck_message: str
    def __init__(self, checkout_id: _Optional[str] = ..., status: _Optional[_Union[CheckoutStatus, str]] = ..., order_id: _Optional[str] = ..., total_cents: _Optional[int] = ..., lines: _Optional[_Iterable[_Union[Line, _Mapping]]] = ..., payment_intent_id: _Optional[str] = ..., reservation_id: _Optional[str] = ..., shipment_status: _Optional[str] = ..., refunded_cents: _Optional[int] = ..., workflow_status: _Optional[str] = ..., stuck_reason: _Optional[str] = ..., stuck_message: _Optional[str] = ...) -> None: ...

class RefundCheckoutRequest(_message.Message):
    __slots__ = ("checkout_id", "refund_id", "amount_cents")
    CHECKOUT_ID_FIELD_NUMBER: _ClassVar[int]
    REFUND_ID_FIELD_NUMBER: _ClassVar[int]
    AMOUNT_CENTS_FIELD_NUMBER: _ClassVar[int]
    checkout_id: str
    refund_id: str
    amount_cents: int
    def __init__(self, checkout_id: _Optional[str] = ..., refund_id: _Optional[str] = ..., amount_cents: _Optional[int] = ...) -> None: ...

class RefundCheckoutResponse(_message.Message):
    __slots__ = ("refund_workflow_id", "already_started")
    REFUND_WORKFLOW_ID_FIELD_NUMBER: _ClassVar[int]
    ALREADY_STARTED_FIELD_NUMBER: _ClassVar[int]
    refund_workflow_id: str
    already_started: bool
    def __init__(self, refund_workflow_id: _Optional[str] = ..., already_started: _Optional[bool] = ...) -> None: ...
